"""Download model files over http(s) into a folder: what the runtime pod's init container runs.

Each ITEM is DEST=URL (or a bare URL, stored under its file name). DEST is a path inside --into; a DEST
ending in "/" takes an archive (.tar, .tar.gz, .tgz, .zip) and unpacks it there (a single top-level folder in
the archive is unwrapped). A URL ending in #sha256=HEX is verified. Files appear atomically: a reader never
sees a partial download. Files already present are kept (checked against their sha256 when one is given).
Transient failures (connection errors, HTTP 408/429/5xx) are retried; exit status 1 names the failed URL.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from kubeinfer.runtime.digests import sha256_of

CHUNK = 1024 * 1024
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")
MARKER = ".kubeinfer-fetched"
RETRYABLE_HTTP = frozenset({408, 429, 500, 502, 503, 504})
_DEST = re.compile(r"^([A-Za-z0-9._/-]+)=(.+)$")


class FetchError(Exception):
    """A download failed for good; the message names the URL and the cause."""


class _Retryable(FetchError):
    """A failure that may pass on another attempt."""


@dataclass(frozen=True)
class Item:
    """One download: the URL (fragment removed), where it goes, and the expected sha256 if any."""

    url: str
    dest: PurePosixPath  # relative to --into
    unpack: bool
    sha256: str | None


def parse_item(text: str) -> Item:
    """Parse DEST=URL or URL; raise ValueError with a message fit for the command line."""
    match = _DEST.match(text)
    dest_text, url = (match.group(1), match.group(2)) if match else ("", text)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{text!r}: only http:// and https:// URLs can be fetched")
    sha256 = None
    if parts.fragment:
        found = re.fullmatch(r"sha256=([0-9a-fA-F]{64})", parts.fragment)
        if not found:
            raise ValueError(f"{text!r}: the URL fragment must be #sha256=<64 hex digits>")
        sha256 = found.group(1).lower()
        url = url.split("#", 1)[0]
    unpack = dest_text.endswith("/")
    if not dest_text:
        name = parts.path.rstrip("/").rsplit("/", 1)[-1]
        if not name or name in (".", ".."):
            raise ValueError(f"{text!r}: the URL has no file name; give one as NAME=URL")
        dest_text = name
    dest = PurePosixPath(dest_text)
    if dest.is_absolute() or ".." in dest.parts or not dest.parts:
        raise ValueError(f"{text!r}: DEST must be a relative path without '..'")
    if unpack and not parts.path.lower().endswith(ARCHIVE_SUFFIXES):
        raise ValueError(f"{text!r}: a DEST ending in '/' needs an archive URL ({', '.join(ARCHIVE_SUFFIXES)})")
    return Item(url=url, dest=dest, unpack=unpack, sha256=sha256)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("items", nargs="+", metavar="ITEM", help="DEST=URL or URL; DEST ending in / unpacks an archive")
    parser.add_argument("--into", type=Path, required=True, metavar="DIR", help="folder the files are written into")
    parser.add_argument("--retries", type=int, default=int(os.environ.get("KUBEINFER_FETCH_RETRIES", "4")),
                        help="attempts after the first on transient failures (default 4; env KUBEINFER_FETCH_RETRIES)")
    parser.add_argument("--timeout", type=float, default=float(os.environ.get("KUBEINFER_FETCH_TIMEOUT", "60")),
                        help="seconds without progress before an attempt fails "
                             "(default 60; env KUBEINFER_FETCH_TIMEOUT)")
    parser.add_argument("--force", action="store_true", help="download even when the file is already there")


def run(args: argparse.Namespace) -> int:
    """Entry point of `kubeinfer fetch`."""
    try:
        items = [parse_item(text) for text in args.items]
    except ValueError as exc:
        print(f"kubeinfer fetch: {exc}", file=sys.stderr)
        return 2
    args.into.mkdir(parents=True, exist_ok=True)
    for item in items:
        try:
            message = fetch(item, args.into, retries=args.retries, timeout=args.timeout, force=args.force)
        except FetchError as exc:
            print(f"kubeinfer fetch: {exc}", file=sys.stderr)
            return 1
        print(f"kubeinfer fetch: {message}", flush=True)
    return 0


def fetch(item: Item, into: Path, *, retries: int = 4, timeout: float = 60.0, force: bool = False,
          backoff: float = 1.0) -> str:
    """Download one item (retrying transient failures); returns a one-line summary."""
    target = into / item.dest
    if not force and _present(item, target):
        return f"{item.url} -> {target}: already present"
    target.parent.mkdir(parents=True, exist_ok=True)
    delay = backoff
    for attempt in range(retries + 1):
        try:
            return _fetch_once(item, target, timeout)
        except _Retryable as exc:
            if attempt == retries:
                raise FetchError(f"{exc} (gave up after {retries + 1} attempts)") from None
            print(f"kubeinfer fetch: {exc}; retrying in {delay:.0f}s", file=sys.stderr, flush=True)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
    raise AssertionError("unreachable")


def _present(item: Item, target: Path) -> bool:
    if item.unpack:
        marker = target / MARKER
        return marker.is_file() and marker.read_text().strip() == item.url
    if not target.is_file():
        return False
    return item.sha256 is None or sha256_of(target) == item.sha256




def _fetch_once(item: Item, target: Path, timeout: float) -> str:
    from kubeinfer import __version__

    request = urllib.request.Request(item.url, headers={"User-Agent": f"kubeinfer-fetch/{__version__}"})
    handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name or 'archive'}.", suffix=".part")
    temp = Path(temp_name)
    try:
        digest = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(handle, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as response:
                expected = response.headers.get("Content-Length")
                for block in iter(lambda: response.read(CHUNK), b""):
                    out.write(block)
                    digest.update(block)
                    size += len(block)
                out.flush()
                os.fsync(out.fileno())
        except urllib.error.HTTPError as exc:
            failure = f"{item.url}: HTTP {exc.code} {exc.reason}"
            raise (_Retryable if exc.code in RETRYABLE_HTTP else FetchError)(failure) from None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise _Retryable(f"{item.url}: {reason}") from None
        if expected is not None and expected.isdigit() and int(expected) != size:
            raise _Retryable(f"{item.url}: connection closed after {size} of {expected} bytes")
        sha = digest.hexdigest()
        if item.sha256 is not None and sha != item.sha256:
            raise FetchError(f"{item.url}: sha256 is {sha}, expected {item.sha256}")
        if item.unpack:
            files = _unpack(temp, target, item.url)
            return f"{item.url} -> {target}/ ({size} bytes, {files} files unpacked, sha256 {sha})"
        os.replace(temp, target)
        _fsync_dir(target.parent)
        return f"{item.url} -> {target} ({size} bytes, sha256 {sha})"
    finally:
        temp.unlink(missing_ok=True)


def _unpack(archive: Path, target: Path, url: str) -> int:
    """Unpack into a fresh sibling folder, then swap it in, so the target is either old or complete."""
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".unpack"))
    try:
        name = urlsplit(url).path.lower()
        try:
            if name.endswith(".zip"):
                _unzip(archive, staging)
            else:
                _untar(archive, staging)
        except (tarfile.TarError, zipfile.BadZipFile, OSError) as exc:
            raise FetchError(f"{url}: cannot unpack: {exc}") from None
        entries = list(staging.iterdir())
        root = entries[0] if len(entries) == 1 and entries[0].is_dir() else staging
        files = sum(1 for path in root.rglob("*") if path.is_file())
        (root / MARKER).write_text(url + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(root, target)
        _fsync_dir(target.parent)
        return files
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _untar(archive: Path, into: Path, *, native_filter: bool | None = None) -> None:
    """Extract as tarfile's "data" filter does (PEP 706): no absolute paths, '..', devices or links leading out;
    no setuid, setgid or group/other write bits; no owners from the archive. Pythons before 3.11.4 lack the
    filter (the images' Debian bookworm has 3.11.2), so there the members are checked and tidied here first.
    ``native_filter`` picks the way (default: the filter where this Python has it)."""
    native = hasattr(tarfile, "data_filter") if native_filter is None else native_filter
    with tarfile.open(archive) as tar:
        if native:
            tar.extractall(into, filter="data")
        else:
            tar.extractall(into, members=_data_members(tar, into, archive.name))


def _data_members(tar: tarfile.TarFile, into: Path, name: str) -> list[tarfile.TarInfo]:
    """The archive's members, checked and tidied like the "data" filter's; FetchError for the first unsafe one."""
    root = os.path.realpath(into)

    def inside(path: str) -> bool:
        return os.path.commonpath([root, os.path.realpath(os.path.join(root, path))]) == root

    members = tar.getmembers()
    for member in members:
        path = PurePosixPath(member.name)
        if path.is_absolute() or ".." in path.parts or not inside(member.name):
            raise FetchError(f"{name}: unsafe path in archive: {member.name!r}")
        if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            raise FetchError(f"{name}: {member.name!r} is a device or pipe, which is not unpacked")
        if member.issym() or member.islnk():
            base = str(path.parent) if member.issym() else ""
            if os.path.isabs(member.linkname) or not inside(os.path.join(base, member.linkname)):
                raise FetchError(f"{name}: {member.name!r} links outside the archive: {member.linkname!r}")
        member.mode = (member.mode & 0o755) | (0o700 if member.isdir() else 0o600)
        member.uid, member.gid, member.uname, member.gname = os.getuid(), os.getgid(), "", ""
    return members


def _unzip(archive: Path, into: Path) -> None:
    with zipfile.ZipFile(archive) as zipped:
        for member in zipped.infolist():
            path = PurePosixPath(member.filename)
            if path.is_absolute() or ".." in path.parts:
                raise FetchError(f"{archive.name}: unsafe path in archive: {member.filename!r}")
        zipped.extractall(into)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
