"""`kubeinfer fetch`, the init container's command, against a real HTTP server on loopback."""

from __future__ import annotations

import hashlib
import http.server
import io
import subprocess
import sys
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubeinfer.runtime import fetch


class Files(http.server.BaseHTTPRequestHandler):
    """Serves ``routes``; a path listed in ``flaky`` answers 503 that many times first."""

    routes: dict[str, bytes] = {}
    flaky: dict[str, int] = {}
    hits: dict[str, int] = {}
    truncate: set[str] = set()

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        self.hits[path] = self.hits.get(path, 0) + 1
        if self.flaky.get(path, 0) > 0:
            self.flaky[path] -= 1
            self.send_error(503, "Busy")
            return
        body = self.routes.get(path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if path in self.truncate else body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def server() -> Iterator[str]:
    Files.routes, Files.flaky, Files.hits, Files.truncate = {}, {}, {}, set()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Files)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def run_fetch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kubeinfer", "fetch", *args], capture_output=True, text=True,
                          timeout=60, env={"KUBEINFER_FETCH_RETRIES": "2", "PATH": "/usr/bin:/bin"})


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith((".part", ".unpack"))]


def test_downloads_files_into_named_places_and_verifies_sha256(server: str, tmp_path: Path) -> None:
    model, labels = b"weights" * 10_000, b"cat\ndog\n"
    Files.routes = {"/v1/model.pt": model, "/labels.txt": labels}
    digest = hashlib.sha256(model).hexdigest()
    done = run_fetch("--into", str(tmp_path), f"model/best.pt={server}/v1/model.pt?sig=1#sha256={digest}",
                     f"{server}/labels.txt")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "model" / "best.pt").read_bytes() == model
    assert (tmp_path / "labels.txt").read_bytes() == labels
    assert f"sha256 {digest}" in done.stdout
    assert leftovers(tmp_path) == []


def test_a_wrong_checksum_fails_and_leaves_no_file(server: str, tmp_path: Path) -> None:
    Files.routes = {"/m.pt": b"tampered"}
    done = run_fetch("--into", str(tmp_path), f"m.pt={server}/m.pt#sha256={'0' * 64}")
    assert done.returncode == 1
    assert f"kubeinfer fetch: {server}/m.pt: sha256 is {hashlib.sha256(b'tampered').hexdigest()}" in done.stderr
    assert not (tmp_path / "m.pt").exists() and leftovers(tmp_path) == []


def test_http_errors_name_the_url_and_are_not_retried_when_permanent(server: str, tmp_path: Path) -> None:
    done = run_fetch("--into", str(tmp_path), f"{server}/missing.pt")
    assert done.returncode == 1
    assert done.stderr.strip() == f"kubeinfer fetch: {server}/missing.pt: HTTP 404 Not Found"
    assert Files.hits["/missing.pt"] == 1


def test_transient_failures_are_retried(server: str, tmp_path: Path) -> None:
    Files.routes = {"/m.onnx": b"onnx"}
    Files.flaky = {"/m.onnx": 2}
    item = fetch.parse_item(f"{server}/m.onnx")
    message = fetch.fetch(item, tmp_path, retries=3, backoff=0.01)
    assert (tmp_path / "m.onnx").read_bytes() == b"onnx"
    assert Files.hits["/m.onnx"] == 3 and "4 bytes" in message


def test_gives_up_after_the_retries(server: str, tmp_path: Path) -> None:
    Files.routes = {"/m.onnx": b"onnx"}
    Files.flaky = {"/m.onnx": 10}
    with pytest.raises(fetch.FetchError, match=r"HTTP 503 Busy \(gave up after 3 attempts\)"):
        fetch.fetch(fetch.parse_item(f"{server}/m.onnx"), tmp_path, retries=2, backoff=0.01)
    assert leftovers(tmp_path) == [] and not (tmp_path / "m.onnx").exists()


def test_a_truncated_download_is_detected(server: str, tmp_path: Path) -> None:
    Files.routes = {"/big.pt": b"x" * 1000}
    Files.truncate = {"/big.pt"}
    with pytest.raises(fetch.FetchError):
        fetch.fetch(fetch.parse_item(f"{server}/big.pt"), tmp_path, retries=0, backoff=0.01)
    assert not (tmp_path / "big.pt").exists()


def test_present_files_are_kept_unless_their_checksum_differs(server: str, tmp_path: Path) -> None:
    Files.routes = {"/m.pt": b"new"}
    (tmp_path / "m.pt").write_bytes(b"old")
    assert "already present" in fetch.fetch(fetch.parse_item(f"{server}/m.pt"), tmp_path)
    assert (tmp_path / "m.pt").read_bytes() == b"old"
    digest = hashlib.sha256(b"new").hexdigest()
    fetch.fetch(fetch.parse_item(f"{server}/m.pt#sha256={digest}"), tmp_path)
    assert (tmp_path / "m.pt").read_bytes() == b"new"


def tar_gz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def zipped(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_archives_are_unpacked_and_a_single_top_folder_unwrapped(server: str, tmp_path: Path) -> None:
    Files.routes = {"/gallery.tar.gz": tar_gz({"gallery/acme/1.jpg": b"a1", "gallery/acme/2.jpg": b"a2",
                                               "gallery/globex/1.jpg": b"g1"}),
                    "/flat.zip": zipped({"acme/1.jpg": b"z1", "initech/1.jpg": b"z2"})}
    done = run_fetch("--into", str(tmp_path), f"base-data/={server}/gallery.tar.gz", f"other/={server}/flat.zip")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "base-data" / "acme" / "2.jpg").read_bytes() == b"a2"
    assert (tmp_path / "base-data" / "globex" / "1.jpg").read_bytes() == b"g1"
    assert (tmp_path / "other" / "initech" / "1.jpg").read_bytes() == b"z2"
    assert "3 files unpacked" in done.stdout
    again = run_fetch("--into", str(tmp_path), f"base-data/={server}/gallery.tar.gz")
    assert "already present" in again.stdout and Files.hits["/gallery.tar.gz"] == 1


def test_archives_that_escape_their_folder_are_refused(server: str, tmp_path: Path) -> None:
    Files.routes = {"/evil.tar": tar_gz({"../../escaped.txt": b"x"}), "/evil.zip": zipped({"../escaped.txt": b"x"})}
    for url in (f"{server}/evil.tar", f"{server}/evil.zip"):
        with pytest.raises(fetch.FetchError, match=r"cannot unpack|unsafe path"):
            fetch.fetch(fetch.parse_item(f"data/={url}"), tmp_path / "into", retries=0)
    assert not list(tmp_path.rglob("escaped.txt"))


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname = kind, mode, link
    return info


# Both ways of unpacking: the "data" filter of Python 3.11.4+ and the checks fetch makes itself where a Python lacks
# it (the images' Debian bookworm Python 3.11.2: the fetch init container failed with a TypeError on every archive).
WAYS = [pytest.param(True, id="data-filter", marks=pytest.mark.skipif(not hasattr(tarfile, "data_filter"),
                                                                      reason="this Python has no data filter")),
        pytest.param(False, id="own-checks")]


@pytest.mark.parametrize("native_filter", WAYS)
def test_tar_archives_unpack_without_the_data_filter_too(native_filter: bool, tmp_path: Path) -> None:
    archive = _tar(tmp_path / "ok.tar", [(_info("top", tarfile.DIRTYPE, 0o777), b""),
                                         (_info("top/a.txt", mode=0o4777), b"alpha"),
                                         (_info("top/same.txt", tarfile.SYMTYPE, link="a.txt"), b"")])
    into = tmp_path / "into"
    into.mkdir()
    fetch._untar(archive, into, native_filter=native_filter)
    assert (into / "top" / "same.txt").read_text() == "alpha"
    assert (into / "top" / "a.txt").stat().st_mode & 0o7777 == 0o755  # no setuid, no group/other write
    assert (into / "top").stat().st_mode & 0o022 == 0


@pytest.mark.parametrize("native_filter", WAYS)
@pytest.mark.parametrize("member", [
    _info("../escaped.txt"), _info("a/../../escaped.txt"),
    _info("out", tarfile.SYMTYPE, link="../../etc/passwd"), _info("abs", tarfile.SYMTYPE, link="/etc/passwd"),
    _info("hard", tarfile.LNKTYPE, link="../outside"), _info("dev", tarfile.CHRTYPE), _info("fifo", tarfile.FIFOTYPE),
], ids=["dotdot", "inner-dotdot", "symlink-out", "symlink-absolute", "hardlink-out", "device", "fifo"])
def test_unsafe_tar_members_are_refused(native_filter: bool, member: tarfile.TarInfo, tmp_path: Path) -> None:
    archive = _tar(tmp_path / "evil.tar", [(_info("fine.txt"), b"x"), (member, b"x")])
    into = tmp_path / "into"
    into.mkdir()
    with pytest.raises((fetch.FetchError, tarfile.TarError)):
        fetch._untar(archive, into, native_filter=native_filter)
    assert not list(tmp_path.rglob("escaped.txt")) and not (into / "out").exists()


@pytest.mark.parametrize("native_filter", WAYS)
def test_absolute_tar_members_never_land_outside(native_filter: bool, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    archive = _tar(tmp_path / "abs.tar", [(_info(str(outside)), b"x")])
    into = tmp_path / "into"
    into.mkdir()
    try:
        fetch._untar(archive, into, native_filter=native_filter)  # the data filter strips the leading '/'
    except fetch.FetchError as exc:
        assert "unsafe path" in str(exc)
    assert not outside.exists()


@pytest.mark.parametrize(("item", "message"), [
    ("ftp://host/m.pt", "only http://, https://, s3:// and gs:// URLs"),
    ("s3://Bad_Bucket/m.pt", "is not a bucket name"),
    ("s3://bucket/m.pt?versionId=", "versionId is empty"),
    ("gs://bucket/m.pt?versionId=1", "unknown query parameter 'versionId' (only generation names a version)"),
    ("s3://bucket/models/#sha256=" + "0" * 64, "#sha256= verifies one file, not a prefix"),
    ("model=s3://bucket/models/", "DEST must end in '/'"),
    ("s3://bucket/models/?versionId=3", "a version names one object, not a prefix"),
    ("../m.pt=http://h/m.pt", "DEST must be a relative path without '..'"),
    ("/abs=http://h/m.pt", "DEST must be a relative path without '..'"),
    ("x/../../m.pt=http://h/m.pt", "DEST must be a relative path without '..'"),
    ("http://h/", "has no file name"),
    ("http://h/m.pt#md5=00", "#sha256=<64 hex digits>"),
    ("data/=http://h/data.bin", "needs an archive URL"),
])
def test_bad_items_are_usage_errors(item: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=None) as caught:
        fetch.parse_item(item)
    assert message in str(caught.value)
    done = run_fetch("--into", str(tmp_path), item)
    assert done.returncode == 2 and message in done.stderr


def test_fetch_does_not_import_torch() -> None:
    code = "import sys, kubeinfer.cli; kubeinfer.cli.build_parser(); import kubeinfer.runtime.fetch; " \
           "print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr
