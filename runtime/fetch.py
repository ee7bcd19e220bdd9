"""Download model files into a folder: what `kubeinfer fetch` (``commands/fetch.py``, the runtime pod's init
container) runs for each item. The command's description says what an item is and what is kept, retried,
verified and recorded."""

from __future__ import annotations

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from kubeinfer.runtime import fetch_record
from kubeinfer.runtime.digests import sha256_of
from kubeinfer.runtime.fetch_cache import NodeCache
from kubeinfer.runtime.fetch_progress import Progress
from kubeinfer.runtime.object_storage import SCHEMES, Bucket, ObjectUrl, StorageError, parse_object_url

CHUNK = 1024 * 1024
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")
MARKER = ".kubeinfer-fetched"
RETRYABLE_HTTP = frozenset({408, 429, 500, 502, 503, 504})
MAX_BACKOFF = 30.0
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
    source: ObjectUrl | None = None  # s3:// and gs:// URLs

    @property
    def is_directory(self) -> bool:
        """An s3:// or gs:// prefix: every object under it is copied into DEST/."""
        return self.source is not None and self.source.is_prefix


def parse_item(text: str) -> Item:
    """Parse DEST=URL or URL; raise ValueError with a message fit for the command line."""
    match = _DEST.match(text)
    dest_text, url = (match.group(1), match.group(2)) if match else ("", text)
    parts = urlsplit(url)
    if not ((parts.scheme in ("http", "https") and parts.netloc) or parts.scheme in SCHEMES):
        raise ValueError(f"{text!r}: only http://, https://, s3:// and gs:// URLs can be fetched")
    sha256 = None
    if parts.fragment:
        found = re.fullmatch(r"sha256=([0-9a-fA-F]{64})", parts.fragment)
        if not found:
            raise ValueError(f"{text!r}: the URL fragment must be #sha256=<64 hex digits>")
        sha256 = found.group(1).lower()
        url = url.split("#", 1)[0]
    source = None
    if parts.scheme in SCHEMES:
        try:
            source = parse_object_url(url)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
    if source is not None and source.is_prefix:
        if sha256 is not None:
            raise ValueError(f"{text!r}: #sha256= verifies one file, not a prefix")
        if dest_text and not dest_text.endswith("/"):
            raise ValueError(f"{text!r}: a prefix (a URL ending in '/') is copied into a folder: DEST must end in '/'")
        name = source.key.rstrip("/").rsplit("/", 1)[-1] or source.bucket
        dest = _relative(text, (dest_text or name).rstrip("/"))
        return Item(url=url, dest=dest, unpack=False, sha256=None, source=source)
    unpack = dest_text.endswith("/")
    if not dest_text:
        name = parts.path.rstrip("/").rsplit("/", 1)[-1]
        if not name or name in (".", ".."):
            raise ValueError(f"{text!r}: the URL has no file name; give one as NAME=URL")
        dest_text = name
    dest = _relative(text, dest_text)
    if unpack and not parts.path.lower().endswith(ARCHIVE_SUFFIXES):
        raise ValueError(f"{text!r}: a DEST ending in '/' needs an archive URL ({', '.join(ARCHIVE_SUFFIXES)}) "
                         "or an s3:// or gs:// prefix ending in '/'")
    return Item(url=url, dest=dest, unpack=unpack, sha256=sha256, source=source)


def _relative(text: str, dest_text: str) -> PurePosixPath:
    dest = PurePosixPath(dest_text)
    if dest.is_absolute() or ".." in dest.parts or not dest.parts:
        raise ValueError(f"{text!r}: DEST must be a relative path without '..'")
    return dest


@dataclass
class _Options:
    retries: int
    timeout: float
    backoff: float
    progress_every: float


def fetch(item: Item, into: Path, *, retries: int = 4, timeout: float = 60.0, force: bool = False,
          backoff: float = 1.0, progress_every: float = 10.0, cache: NodeCache | None = None) -> str:
    """Download one item (retrying transient failures; an s3:// or gs:// object from ``cache`` when it holds the
    object's current version); returns a one-line summary."""
    options = _Options(retries, timeout, backoff, progress_every)
    target = into / item.dest
    try:
        bucket = Bucket(item.source, timeout=timeout) if item.source is not None else None
        if not force and _present(item, into, target, bucket):
            return f"{item.url} -> {target}: already present"
        target.parent.mkdir(parents=True, exist_ok=True)
        if bucket is not None and item.is_directory:
            return _fetch_directory(item, into, target, bucket, options, cache)
        handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        os.close(handle)
        part = _Part(Path(temp_name))
        try:
            if bucket is not None and item.source is not None:
                key = _cache_key(cache, bucket, item, part) if cache is not None else None
                if cache is not None and key is not None and _from_cache(cache, key, part):
                    return _place(item, into, target, part) + " from the node cache"
                pinned = (part.etag, part.version)
                _download(_object_source(bucket, item.source), item.url, part, options)
                if cache is not None and key is not None and (part.etag, part.version) == pinned:
                    cache.store(key, part.path, part.digest.hexdigest())  # not when it changed meanwhile
            else:
                _download(_http_source(item.url, timeout), item.url, part, options)
            return _place(item, into, target, part)
        finally:
            part.path.unlink(missing_ok=True)
    except StorageError as exc:
        raise FetchError(str(exc)) from None


def _cache_key(cache: NodeCache, bucket: Bucket, item: Item, part: _Part) -> str | None:
    """The cache key of the object's current version, asked of the store with this pod's credentials (an object
    it may not read fails here, before the cache is looked at); None when the store cannot say just now. The
    download that follows is pinned to that version (or ETag), so what is stored under the key is what it names."""
    assert item.source is not None
    try:
        meta = bucket.head(item.source.key, item.source.version)
    except StorageError as exc:
        if not exc.retryable:
            raise
        return None
    part.etag, part.version = meta.etag, meta.version
    return cache.key(item.url, meta.etag, meta.version)


def _from_cache(cache: NodeCache, key: str, part: _Part) -> bool:
    hit = cache.copy_out(key, part.path)
    if hit is None:
        part.path.write_bytes(b"")  # the download starts from nothing
        return False
    part.size, part.digest = hit.size, hit.digest
    return True


def _present(item: Item, into: Path, target: Path, bucket: Bucket | None) -> bool:
    recorded = fetch_record.entry(into, str(item.dest))
    if item.is_directory:
        if not target.is_dir() or recorded.get("url") != item.url:
            return False
        assert bucket is not None and item.source is not None
        try:
            listed = bucket.list(item.source.key)
        except StorageError:
            return False
        return recorded.get("etags") == {_inside(item.source, meta.key): meta.etag for meta in listed}
    if item.unpack:
        marker = target / MARKER
        if not (marker.is_file() and marker.read_text().strip() == item.url):
            return False
    elif not target.is_file():
        return False
    elif item.sha256 is not None:
        return sha256_of(target) == item.sha256
    if bucket is None or item.source is None:
        return True
    if recorded.get("url") != item.url or not recorded.get("etag"):
        return False
    try:
        return bucket.head(item.source.key, item.source.version).etag == recorded["etag"]
    except StorageError:
        return False


@dataclass
class _Part:
    """A download in progress: its temporary file and what that file holds so far."""

    path: Path
    size: int = 0
    digest: Any = field(default_factory=hashlib.sha256)
    etag: str | None = None
    version: str | None = None

    def reset(self) -> None:
        self.path.write_bytes(b"")
        self.size, self.digest, self.etag, self.version = 0, hashlib.sha256(), None, None


@dataclass
class _Stream:
    """One attempt's response: the size it will end at (when known), the object's identity, and the bytes."""

    total: int | None
    chunks: Iterator[bytes]
    etag: str | None = None
    version: str | None = None
    resumable: bool = False


_Source = Callable[[_Part], _Stream]


def _download(source: _Source, label: str, part: _Part, options: _Options) -> None:
    """Fill ``part`` from ``source``, retrying with backoff. A resumable source continues where the last attempt
    stopped; an attempt that made progress there does not count against the retries."""
    delay = options.backoff
    failures = 0
    while True:
        before = part.size
        try:
            _attempt(source, label, part, options.progress_every)
            return
        except (_Retryable, StorageError) as exc:
            if isinstance(exc, StorageError) and not exc.retryable:
                raise
            if isinstance(exc, StorageError) and exc.changed:
                part.reset()
            resumed = part.size > before and part.size > 0
            failures = 0 if resumed else failures + 1
            if failures > options.retries:
                raise FetchError(f"{exc} (gave up after {options.retries + 1} attempts)") from None
            where = f" at byte {part.size}" if part.size else ""
            print(f"kubeinfer fetch: {exc}; retrying{where} in {delay:.0f}s", file=sys.stderr, flush=True)
            time.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)


def _attempt(source: _Source, label: str, part: _Part, progress_every: float) -> None:
    stream = source(part)
    if not stream.resumable and part.size:
        part.reset()
    part.etag, part.version = part.etag or stream.etag, part.version or stream.version
    progress = Progress(label, stream.total, progress_every, start=part.size)
    with part.path.open("ab") as out:
        for block in stream.chunks:
            out.write(block)
            part.digest.update(block)
            part.size += len(block)
            progress.add(len(block))
        out.flush()
        os.fsync(out.fileno())
    if stream.total is not None and part.size != stream.total:
        raise _Retryable(f"{label}: connection closed after {part.size} of {stream.total} bytes")


def _object_source(bucket: Bucket, source: ObjectUrl, key: str | None = None,
                   pinned_etag: str | None = None) -> _Source:
    """Reads one object; a resumed read asks for the same version (or, unversioned, the same ETag)."""
    key = source.key if key is None else key

    def open_stream(part: _Part) -> _Stream:
        version = source.version or part.version
        etag = pinned_etag or (part.etag if version is None else None)
        if part.size and version is None and etag is None:
            part.reset()  # nothing pins what the first bytes came from: read it whole again
        meta, chunks = bucket.read(key, start=part.size, etag=etag, version=version)
        return _Stream(total=meta.size, chunks=chunks, etag=meta.etag, version=meta.version, resumable=True)

    return open_stream


def _http_source(url: str, timeout: float) -> _Source:
    from kubeinfer import __version__

    def open_stream(part: _Part) -> _Stream:
        request = urllib.request.Request(url, headers={"User-Agent": f"kubeinfer-fetch/{__version__}"})
        try:
            response = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            failure = f"{url}: HTTP {exc.code} {exc.reason}"
            raise (_Retryable if exc.code in RETRYABLE_HTTP else FetchError)(failure) from None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            raise _Retryable(f"{url}: {getattr(exc, 'reason', exc)}") from None
        expected = response.headers.get("Content-Length")
        total = int(expected) if expected is not None and expected.isdigit() else None
        return _Stream(total=total, chunks=_http_chunks(url, response), etag=response.headers.get("ETag"))

    return open_stream


def _http_chunks(url: str, response: Any) -> Iterator[bytes]:
    try:
        with response:
            yield from iter(lambda: response.read(CHUNK), b"")
    except (OSError, TimeoutError) as exc:
        raise _Retryable(f"{url}: {exc}") from None


def _place(item: Item, into: Path, target: Path, part: _Part) -> str:
    """Verify the download, then move it (or its unpacked archive) into place and record it."""
    sha = part.digest.hexdigest()
    if item.sha256 is not None and sha != item.sha256:
        raise FetchError(f"{item.url}: sha256 is {sha}, expected {item.sha256}")
    pinned = "".join(f", {name} {value}" for name, value in (("etag", part.etag), ("version", part.version))
                     if value)
    if item.unpack:
        files = _unpack(part.path, target, item.url)
        summary = f"{item.url} -> {target}/ ({part.size} bytes, {files} files unpacked, sha256 {sha}{pinned})"
    else:
        os.replace(part.path, target)
        _fsync_dir(target.parent)
        summary = f"{item.url} -> {target} ({part.size} bytes, sha256 {sha}{pinned})"
    fetch_record.save(into, str(item.dest), {"url": item.url, "size": part.size, "sha256": sha, "etag": part.etag,
                                             "version": part.version})
    return summary


def _inside(source: ObjectUrl, key: str) -> str:
    return key[len(source.key):]


def _fetch_directory(item: Item, into: Path, target: Path, bucket: Bucket, options: _Options,
                     cache: NodeCache | None = None) -> str:
    """Copy every object under the prefix into a fresh sibling folder, then swap it in whole."""
    assert item.source is not None
    listed = _listing(bucket, item.source, options)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".unpack"))
    try:
        etags: dict[str, str | None] = {}
        total = cached = 0
        for meta in listed:
            relative = _inside(item.source, meta.key)
            path = PurePosixPath(relative)
            if path.is_absolute() or ".." in path.parts or not path.parts:
                raise FetchError(f"{item.url}: unsafe object name under the prefix: {meta.key!r}")
            destination = staging / path
            destination.parent.mkdir(parents=True, exist_ok=True)
            part = _Part(destination.with_name(f".{destination.name}.part"))
            part.path.touch()
            label = f"{item.source.scheme}://{item.source.bucket}/{meta.key}"
            # The listing (made with this pod's credentials) names each object's ETag and version: its cache key.
            key = cache.key(label, meta.etag, meta.version) if cache is not None else None
            if cache is None or key is None or not _from_cache(cache, key, part):
                part.etag = meta.etag
                _download(_object_source(bucket, item.source, meta.key, meta.etag), label, part, options)
                if cache is not None and key is not None and part.etag == meta.etag:
                    cache.store(key, part.path, part.digest.hexdigest())
            else:
                cached += 1
            os.replace(part.path, destination)
            etags[relative] = meta.etag
            total += part.size
        (staging / MARKER).write_text(item.url + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
        _fsync_dir(target.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    fetch_record.save(into, str(item.dest), {"url": item.url, "size": total, "files": len(etags), "etags": etags})
    from_cache = f", {cached} from the node cache" if cached else ""
    return f"{item.url} -> {target}/ ({len(etags)} {'file' if len(etags) == 1 else 'files'}, {total} bytes{from_cache})"


def _listing(bucket: Bucket, source: ObjectUrl, options: _Options) -> list[Any]:
    delay = options.backoff
    for attempt in range(options.retries + 1):
        try:
            listed = bucket.list(source.key)
            break
        except StorageError as exc:
            if not exc.retryable:
                raise
            if attempt == options.retries:
                raise FetchError(f"{exc} (gave up after {options.retries + 1} attempts)") from None
            print(f"kubeinfer fetch: {exc}; retrying in {delay:.0f}s", file=sys.stderr, flush=True)
            time.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)
    if not listed:
        if bucket.bucket_exists() is False:
            raise FetchError(f"{source}: no such bucket {source.bucket!r}")
        raise FetchError(f"{source}: no objects under the prefix")
    return listed
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
