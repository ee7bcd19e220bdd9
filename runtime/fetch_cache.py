"""A node-local cache of fetched objects: a second pod of a model on the same node copies it from local disk.

Entries are keyed by the object's URL and the ETag and version the store reports for it now, read with the pod's
own credentials: a pod that may not read the object gets an error from the store before the cache is consulted,
and a changed object has a new key. An entry holds the bytes and their sha256, which a hit checks again as it
copies. Entries are written under a temporary name and renamed in, so pods sharing the folder never see half of
one; the least recently used go when the folder grows past its bound (under an flock, one evictor at a time).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHUNK = 4 * 1024 * 1024
DATA = "data"
META = "meta.json"


@dataclass(frozen=True)
class Hit:
    """A cache entry copied out: its size and the sha256 of what was copied."""

    size: int
    digest: Any  # a hashlib sha256 object


class NodeCache:
    """The cache folder (a hostPath every fetch on the node mounts) and its size bound in bytes."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root, self.max_bytes = root, max_bytes
        self.objects = root / "objects"
        self.objects.mkdir(parents=True, exist_ok=True)
        if not os.access(self.objects, os.W_OK | os.X_OK):
            raise PermissionError(13, "not writable by this user", str(self.objects))

    @staticmethod
    def key(url: str, etag: str | None, version: str | None) -> str:
        return hashlib.sha256(f"{url}\n{etag or ''}\n{version or ''}".encode()).hexdigest()

    def copy_out(self, key: str, target: Path) -> Hit | None:
        """Copy the entry into ``target`` (sha256 checked on the way); None on a miss or a damaged entry."""
        entry = self.objects / key
        try:
            expected = json.loads((entry / META).read_text())["sha256"]
            digest, size = hashlib.sha256(), 0
            with (entry / DATA).open("rb") as source, target.open("wb") as out:
                for block in iter(lambda: source.read(CHUNK), b""):
                    out.write(block)
                    digest.update(block)
                    size += len(block)
        except (OSError, ValueError, KeyError):
            target.write_bytes(b"")  # a miss leaves ``target`` empty, as it was
            return None
        if digest.hexdigest() != expected:
            shutil.rmtree(entry, ignore_errors=True)  # damaged: this fetch downloads it and stores it again
            target.write_bytes(b"")
            return None
        with contextlib.suppress(OSError):
            os.utime(entry)  # most recently used
        return Hit(size, digest)

    def store(self, key: str, source: Path, sha256: str) -> None:
        """Add ``source`` as the entry (a copy), then evict down to the bound. Failures only cost the cache."""
        entry = self.objects / key
        if entry.exists():
            return
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=".entry-"))
        try:
            shutil.copyfile(source, staging / DATA)
            (staging / META).write_text(json.dumps({"sha256": sha256, "size": source.stat().st_size}))
            os.rename(staging, entry)
        except OSError:
            return
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self.evict(keep=key)

    def evict(self, keep: str | None = None) -> list[str]:
        """Remove least recently used entries until the total is within the bound; the keys removed."""
        removed: list[str] = []
        with self._locked():
            entries = []
            for entry in self.objects.iterdir():
                with contextlib.suppress(OSError):
                    entries.append((entry.stat().st_mtime, (entry / DATA).stat().st_size, entry))
            total = sum(size for _, size, _ in entries)
            for _, size, entry in sorted(entries, key=lambda e: e[0]):
                if total <= self.max_bytes:
                    break
                if entry.name == keep:
                    continue
                shutil.rmtree(entry, ignore_errors=True)
                total -= size
                removed.append(entry.name)
        return removed

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with (self.root / ".lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
