"""Virtual environments for the peer servers and the Open Inference Protocol load generator.

Each peer lives in its own venv under ``.cache/bench-venvs/`` because their
dependency pins conflict with each other and with kubeinfer's (tritonclient needs
protobuf < 7, kubeinfer's stubs need 7). The peers all reuse the project's own torch
(a multi-GB CUDA build): ``torch-overlay/`` links torch and every distribution it
needs from the project's venv, and a ``.pth`` file puts it on each peer venv's path, so
pip finds the pinned torch installed and downloads nothing. A venv's own packages
come first on its path, so a peer that needs another version of one of torch's
dependencies gets its own copy. A venv is reinstalled only when its package list
changes (a stamp file records it).
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENVS = REPO / ".cache" / "bench-venvs"
TORCH_OVERLAY = VENVS / "torch-overlay"
PEER_TORCH = f"torch=={importlib.metadata.version('torch')}"  # the project's, shared through the overlay


@dataclass(frozen=True)
class VenvSpec:
    """One venv: its name and the exact requirements pip installs into it."""

    name: str
    requirements: tuple[str, ...]

    @property
    def path(self) -> Path:
        return VENVS / self.name

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def stamp(self) -> Path:
        return self.path / ".bench-installed"

    def stamp_text(self) -> str:
        return "\n".join(self.requirements) + "\n"


SPECS: dict[str, VenvSpec] = {
    "kserve": VenvSpec("kserve", (PEER_TORCH, "kserve==0.21.0", "numpy==2.4.6")),
    # mlserver 1.7.1 starts with the uvloop policy API that uvloop 0.22 removed
    "mlserver": VenvSpec("mlserver", (PEER_TORCH, "mlserver==1.7.1", "uvloop==0.21.0", "numpy==2.4.6")),
    "litserve": VenvSpec("litserve", (PEER_TORCH, "litserve==0.2.19", "numpy==2.4.6")),
    # the load generator for Open Inference Protocol (tritonclient) and plain HTTP (aiohttp) targets
    "client": VenvSpec("client", ("tritonclient[grpc]==2.73.0", "aiohttp==3.14.5", "numpy==2.4.6")),
}


class InstallError(RuntimeError):
    """A venv could not be built; the message names the venv and points at its log."""


def is_installed(spec: VenvSpec) -> bool:
    return spec.python.exists() and spec.stamp.exists() and spec.stamp.read_text() == spec.stamp_text()


def ensure(spec: VenvSpec, log_dir: Path) -> Path:
    """Build ``spec``'s venv unless it is already there with the same requirements; returns its python."""
    if is_installed(spec):
        return spec.python
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"install-{spec.name}.log"
    print(f"[bench] installing {spec.name} venv ({' '.join(spec.requirements)}); log: {log_path}", flush=True)
    shutil.rmtree(spec.path, ignore_errors=True)
    VENVS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with log_path.open("w") as log:
        steps = [
            [sys.executable, "-m", "venv", str(spec.path)],
            [str(spec.python), "-m", "pip", "install", "-q", "--upgrade", "pip"],
            [str(spec.python), "-m", "pip", "install", *spec.requirements],
        ]
        for number, step in enumerate(steps):
            if number == 1 and PEER_TORCH in spec.requirements:
                share_torch(spec)
            log.write("$ " + " ".join(step) + "\n")
            log.flush()
            # cwd outside the repo: its top-level `operator/` folder would shadow the stdlib module for `python -m`
            if subprocess.run(step, stdout=log, stderr=subprocess.STDOUT, cwd=VENVS, check=False).returncode != 0:
                raise InstallError(f"installing the {spec.name} venv failed at `{' '.join(step)}`; see {log_path}")
    spec.stamp.write_text(spec.stamp_text())
    print(f"[bench] {spec.name} venv ready in {time.monotonic() - started:.0f}s", flush=True)
    return spec.python


def share_torch(spec: VenvSpec) -> None:
    """Put the project's torch on ``spec``'s path (through the overlay), so its pinned torch is already there."""
    build_torch_overlay()
    link_overlay(spec.python)


def link_overlay(python: Path, overlay: Path = TORCH_OVERLAY) -> None:
    """A .pth file in ``python``'s venv that adds ``overlay`` to its path, after the venv's own packages."""
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "kubeinfer-torch-overlay.pth").write_text(f"{overlay}\n")


def build_torch_overlay(overlay: Path = TORCH_OVERLAY) -> None:
    """Links to torch and the distributions it needs (recursively, with the extras asked for, on this platform)
    in the project's venv."""
    from packaging.requirements import Requirement

    site = Path(sysconfig.get_paths()["purelib"])
    wanted: set[str] = set()
    todo: list[tuple[str, frozenset[str]]] = [("torch", frozenset())]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        wanted.add(name)
        for text in importlib.metadata.distribution(name).requires or []:
            requirement = Requirement(text)
            marker = requirement.marker
            if marker is None or any(marker.evaluate({"extra": extra}) for extra in extras or {""}):
                todo.append((_canonical(requirement.name), frozenset(requirement.extras)))
    shutil.rmtree(overlay, ignore_errors=True)
    overlay.mkdir(parents=True)
    for name in sorted(wanted):
        for file in importlib.metadata.distribution(name).files or []:
            top = file.parts[0]
            link = overlay / top
            if (top not in ("..", "bin", "__pycache__") and not top.endswith(".pth") and not link.exists()
                    and (site / top).exists()):
                link.symlink_to(site / top)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def versions(spec: VenvSpec) -> dict[str, str]:
    """Installed distribution versions in a venv (recorded with the results)."""
    out = subprocess.run([str(spec.python), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True,
                         cwd=VENVS, check=False).stdout
    pairs = (line.split("==", 1) for line in out.splitlines() if "==" in line)
    return {name.lower(): version for name, version in pairs}


if __name__ == "__main__":
    for name in sys.argv[1:] or list(SPECS):
        print(ensure(SPECS[name], VENVS / "logs"))
