"""Images for the real node's containerd, without a registry.

Two ways in, both ending in ``ctr images import`` into containerd's ``k8s.io`` namespace (the CRI's):

* ``scratch_image_archive``: an OCI archive written here with a single layer holding a few static binaries, the
  image ``FROM scratch`` (the pause, CoreDNS and metrics-server images). Written deterministically (fixed times and
  owners), so the same binaries give the same digests and an import of an unchanged image writes nothing.
* ``ImageLoader``: images built with buildah (the project's ``localhost/kubeinfer-*`` images, in buildah's default
  vfs storage). Only the layers containerd lacks are sent, streamed into ``ctr images import -``, each reassembled
  from the storage's own record of the layer (uncompressed, its digest checked), so a rebuild that changed only the
  top layer moves only that layer. ``buildah push``/``skopeo copy`` would export (and gzip) every layer each time:
  13 s for a 1 GiB image whose 2 KiB top layer changed.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NAMESPACE = "k8s.io"
BUILDAH = ("buildah", "--storage-driver", "vfs")
# buildah's and podman's default storage for root, with the vfs driver the project's images are built with
STORAGE_ROOT = Path("/var/lib/containers/storage")
STORAGE_REF = f"containers-storage:[vfs@{STORAGE_ROOT}+/run/containers/storage]"
# The project's images that a real node gets at start and from `make cluster-load-images`, where buildah has them.
PROJECT_IMAGES = (re.compile(r"^localhost/kubeinfer-operator:dev$"), re.compile(r"^localhost/kubeinfer-runtime:.+$"))
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"


class ImageError(RuntimeError):
    """An image could not be exported from buildah or imported into containerd."""


def _run(command: Sequence[str], timeout: float = 1800, stdin: bytes | None = None) -> str:
    done = subprocess.run(list(command), capture_output=True, timeout=timeout, input=stdin)
    if done.returncode != 0:
        raise ImageError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.decode(errors='replace')}")
    return done.stdout.decode(errors="replace")


def split_name(name: str) -> tuple[str, str]:
    """'localhost/x:dev' -> ('localhost/x', 'dev'); a name without a tag gets 'latest'."""
    repository, _, tag = name.rpartition(":")
    if not repository or "/" in tag:
        return name, "latest"
    return repository, tag


# -- containerd -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Containerd:
    """ctr against the node's containerd, in the CRI's namespace."""

    socket: Path

    def ctr(self, *args: str, timeout: float = 1800, stdin: bytes | None = None) -> str:
        return _run(["ctr", "--address", str(self.socket), "--namespace", NAMESPACE, *args], timeout, stdin)

    def import_archive(self, archive: Path | bytes, repository: str) -> None:
        """Import an OCI archive (a file, or bytes) and unpack it for the CRI's snapshotter."""
        if isinstance(archive, Path):
            self.ctr("images", "import", "--base-name", repository, str(archive))
        else:
            self.ctr("images", "import", "--base-name", repository, "-", stdin=archive)

    @contextlib.contextmanager
    def importer(self, repository: str) -> Iterator[Any]:
        """A pipe into ``ctr images import -``: write an OCI archive to it; the import finishes on exit."""
        command = ["ctr", "--address", str(self.socket), "--namespace", NAMESPACE, "images", "import",
                   "--base-name", repository, "-"]
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert process.stdin is not None and process.stderr is not None
        try:
            yield process.stdin
        finally:
            with contextlib.suppress(BrokenPipeError):
                process.stdin.close()
            error = process.stderr.read().decode(errors="replace")
            if process.wait(1800) != 0:
                raise ImageError(f"ctr images import failed ({process.returncode}): {error.strip()}")

    def images(self) -> set[str]:
        return set(self.ctr("images", "list", "--quiet").split())

    def blobs(self) -> set[str]:
        """The digests of the content store."""
        lines = self.ctr("content", "list", "--quiet").split()
        return set(lines)



# -- images FROM scratch ----------------------------------------------------------------------------------------
def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _tar_entry(tar: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime, info.uid, info.gid = len(data), mode, 0, 0, 0
    tar.addfile(info, io.BytesIO(data))


def _layer(files: dict[str, Path]) -> bytes:
    """An uncompressed layer: each binary at its path in the image, with its parent folders."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        folders = sorted({str(Path(p).parent).lstrip("/") for p in files} - {""})
        for folder in folders:
            info = tarfile.TarInfo(folder)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        for path, source in sorted(files.items()):
            _tar_entry(tar, path.lstrip("/"), source.read_bytes(), 0o755)
    return buffer.getvalue()


def scratch_image_archive(name: str, files: dict[str, Path], entrypoint: Sequence[str], user: str = "") -> bytes:
    """An OCI archive of an image FROM scratch holding ``files`` (path in the image -> binary on this machine)."""
    layer = _layer(files)
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "created": "1970-01-01T00:00:00Z",
        "config": {"Entrypoint": list(entrypoint), "User": user, "Env": ["PATH=/bin:/usr/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]},
    }, sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": _digest(config), "size": len(config)},
        "layers": [{"mediaType": LAYER_TAR, "digest": _digest(layer), "size": len(layer)}],
    }, sort_keys=True).encode()
    _, tag = split_name(name)
    index = json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": MANIFEST, "digest": _digest(manifest), "size": len(manifest),
         "annotations": {REF_NAME: tag}}]}, sort_keys=True).encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        _tar_entry(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}', 0o644)
        _tar_entry(tar, "index.json", index, 0o644)
        for blob in (layer, config, manifest):
            _tar_entry(tar, "blobs/sha256/" + _digest(blob).split(":")[1], blob, 0o644)
    return buffer.getvalue()


# -- images from buildah ----------------------------------------------------------------------------------------
def buildah_images() -> list[str]:
    """The tagged images in buildah's (and podman's) vfs storage."""
    listing = json.loads(_run([*BUILDAH, "images", "--json"], timeout=120) or "[]")
    names = [name for image in listing for name in image.get("names") or []]
    return sorted(set(names))


def project_images(available: Iterable[str]) -> list[str]:
    return [name for name in available if any(p.match(name) for p in PROJECT_IMAGES)]


class _Reassembled(io.RawIOBase):
    """A layer's tar, byte for byte as it was committed, from its tar-split record (the headers and padding) and
    the files in the layer's vfs folder; the sha256 of what was read is checked against the layer's digest."""

    def __init__(self, split: Path, folder: Path, digest: str) -> None:
        self._chunks = self._generate(split, folder)
        self._buffer = b""
        self._hash = hashlib.sha256()
        self._digest = digest

    @staticmethod
    def _generate(split: Path, folder: Path) -> Iterator[bytes]:
        with gzip.open(split, "rt") as entries:
            for line in entries:
                entry = json.loads(line)
                if entry["type"] == 2:  # a segment: tar headers and padding, verbatim
                    if entry.get("payload"):
                        yield base64.b64decode(entry["payload"])
                elif entry.get("size"):  # a file's content
                    raw = base64.b64decode(entry["name_raw"]) if entry.get("name_raw") else entry["name"].encode()
                    with open(folder / os.fsdecode(raw).lstrip("/"), "rb") as content:
                        left = int(entry["size"])
                        while left:
                            chunk = content.read(min(left, 1 << 20))
                            if not chunk:
                                raise ImageError(f"{folder}: {raw!r} is shorter than its tar header says")
                            left -= len(chunk)
                            yield chunk

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buffer:
            chunk = next(self._chunks, None)
            if chunk is None:
                if "sha256:" + self._hash.hexdigest() != self._digest:
                    raise ImageError(f"layer {self._digest}: reassembled from tar-split, got another digest")
                return 0
            self._hash.update(chunk)
            self._buffer = chunk
        count = min(len(target), len(self._buffer))
        target[:count] = self._buffer[:count]
        self._buffer = self._buffer[count:]
        return count


@dataclass
class ImageLoader:
    """Moves images from buildah's vfs storage into the node's containerd, sending only the layers it lacks.

    Each layer's tar is reassembled from the storage's own record (tar-split plus the layer's folder, checked
    against the layer's digest), so an unchanged lower layer is never read: a rebuild that changed only the top
    layer costs that layer. Where the storage lacks a record, ``skopeo copy`` exports the whole image."""

    containerd: Containerd
    storage: Path = STORAGE_ROOT
    work: Path = Path("/tmp")

    def load(self, name: str) -> dict[str, Any]:
        """Import ``name``; how many blobs and bytes went to containerd and how long it took."""
        repository, tag = split_name(name)
        started = time.monotonic()
        manifest = json.loads(_run(["skopeo", "inspect", "--raw", STORAGE_REF + name], timeout=120))
        config = _run(["skopeo", "inspect", "--config", "--raw", STORAGE_REF + name], timeout=120).encode()
        if "layers" not in manifest:
            raise ImageError(f"{name}: a manifest list; load a single-platform image")
        have = self.containerd.blobs()
        missing = [layer for layer in manifest["layers"] if layer["digest"] not in have]
        sources = {layer["digest"]: self._layer_record(layer["digest"]) for layer in missing}
        if all(sources.values()):
            self._import(repository, tag, manifest, config, missing, sources)
            how = "tar-split"
        else:
            self._import_exported(name, repository, tag, have)
            how = "skopeo"
        return {"image": name, "layers": len(manifest["layers"]), "layers_sent": len(missing),
                "bytes_sent": sum(int(layer["size"]) for layer in missing), "how": how,
                "seconds": round(time.monotonic() - started, 2)}

    def _layer_record(self, digest: str) -> tuple[Path, Path] | None:
        """The tar-split record and vfs folder of a layer with this diff digest, where the storage has both."""
        layers = json.loads((self.storage / "vfs-layers" / "layers.json").read_text())
        for layer in layers:
            split = self.storage / "vfs-layers" / f"{layer['id']}.tar-split.gz"
            folder = self.storage / "vfs" / "dir" / layer["id"]
            if layer.get("diff-digest") == digest and split.exists() and folder.is_dir():
                return split, folder
        return None

    def _import(self, repository: str, tag: str, manifest: dict[str, Any], config: bytes,
                missing: list[dict[str, Any]], sources: dict[str, Any]) -> None:
        """Stream an OCI archive of the image with only the missing layers into ``ctr images import``."""
        oci = json.dumps({
            "schemaVersion": 2, "mediaType": MANIFEST,
            "config": {"mediaType": CONFIG, "digest": _digest(config), "size": len(config)},
            "layers": [{"mediaType": LAYER_TAR, "digest": layer["digest"], "size": layer["size"]}
                       for layer in manifest["layers"]]}).encode()
        with self.containerd.importer(repository) as sink, tarfile.open(fileobj=sink, mode="w|") as tar:
            _layout_head(tar, oci, tag)
            for blob in (oci, config):
                _tar_entry(tar, _blob_path(_digest(blob)), blob, 0o644)
            for layer in missing:
                info = tarfile.TarInfo(_blob_path(layer["digest"]))
                info.size, info.mode = int(layer["size"]), 0o644
                tar.addfile(info, io.BufferedReader(_Reassembled(*sources[layer["digest"]], layer["digest"])))

    def _import_exported(self, name: str, repository: str, tag: str, have: set[str]) -> None:
        """The whole image exported by skopeo (as stored: uncompressed here), the blobs containerd lacks sent."""
        with tempfile.TemporaryDirectory(dir=self.work, prefix="kubeinfer-export-") as folder:
            exported = Path(folder) / "image"
            _run(["skopeo", "copy", "--quiet", STORAGE_REF + name, f"dir:{exported}"])
            raw = (exported / "manifest.json").read_bytes()
            manifest = json.loads(raw)
            blobs = [manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])]
            with self.containerd.importer(repository) as sink, tarfile.open(fileobj=sink, mode="w|") as tar:
                _layout_head(tar, raw, tag, manifest.get("mediaType", MANIFEST))
                _tar_entry(tar, _blob_path(_digest(raw)), raw, 0o644)
                for digest in blobs:
                    if digest not in have:
                        tar.add(exported / digest.split(":", 1)[1], arcname=_blob_path(digest))


def _blob_path(digest: str) -> str:
    return "blobs/" + digest.replace(":", "/")


def _layout_head(tar: tarfile.TarFile, manifest: bytes, tag: str, media_type: str = MANIFEST) -> None:
    """oci-layout and index.json naming the one manifest by its tag."""
    index = json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": media_type, "digest": _digest(manifest), "size": len(manifest),
         "annotations": {REF_NAME: tag}}]}).encode()
    _tar_entry(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}', 0o644)
    _tar_entry(tar, "index.json", index, 0o644)
