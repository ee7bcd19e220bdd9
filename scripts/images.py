"""Build the two images from the real Dockerfiles with buildah and run them with podman as their pods run them.

`make images` runs this with the project's venv (it renders the runtime's pod spec with kubeinfer.operator.render
and talks to the runtime with kubeinfer.clients). No Docker engine and no registry: the Dockerfiles' default
BASE_IMAGE (python:3.11-slim-bookworm) is stood in for by a Debian bookworm base with Python 3.11 that
debootstrap builds here once (cached as localhost/kubeinfer-base:bookworm-python3.11). Images land in
buildah/podman's default storage with the vfs driver:

    localhost/kubeinfer-operator:dev   runs `kubeinfer operator --help` as the chart's pod does: its uid,
                                       read-only root filesystem, /tmp the only writable mount
    localhost/kubeinfer-runtime:cpu    (Dockerfile.runtime --target cpu: no torch) and
    localhost/kubeinfer-runtime:gpu    (--target gpu) each run the operator's rendered runtime pod for a detect
                                       InferenceService whose model is a URL (the demo detector's ONNX export
                                       for the cpu image, its .pt for the gpu image): the `kubeinfer fetch` init
                                       container downloads it into the pod's emptyDir, then `kubeinfer serve`
                                       serves it (mounted read-only) and answers /readyz, gRPC health and a
                                       Detect, and stops cleanly on SIGTERM; the time from the container's start
                                       to /readyz is reported

Where the local control plane is built (make cluster-build), the operator image also runs against it as the
chart runs it and reconciles an InferenceService: its Deployment appears with the runtime image (--no-cluster
skips this).

Both run with host networking on loopback; the only change to the rendered spec is --host 127.0.0.1 and free
ports instead of 0.0.0.0:8001/8080 (a pod has its own network namespace; here the host's ports are shared).
Any failure prints one line naming the image and the step, with the full log under .cache/images/logs, and
exits 1.

vfs stores every layer as a full copy, so each build removes the layers of that image's previous build that it
no longer uses (the project stage changes with every source edit: ~0.4 GB per operator build, which used to pile
up until a build failed for want of disk). The ids of each image's last build are kept in
.cache/images/NAME-layers.txt; nothing else in the storage is touched.

    python scripts/images.py [--only operator|runtime] [--base-image IMAGE] [--dockerfile NAME=PATH] [--no-run]
                             [--no-cluster]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / ".cache" / "images"
LOGS = WORK / "logs"
DEMO_MODEL = REPO / ".cache" / "models" / "detector.pt"
STORAGE = ["--storage-driver", "vfs"]
PODMAN = ["podman", *STORAGE, "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
# podman cannot raise these limits here without the flags (setrlimit refused); a pod gets the node's defaults.
ULIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]
BASE_TAG = "localhost/kubeinfer-base:bookworm-slim-python3.11"
# What debian:bookworm-slim (the base of python:3.11-slim-bookworm) leaves out: documentation, manuals and
# translations (copyright files stay), also for what a Dockerfile installs later with apt.
SLIM_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*", "/usr/share/info/*",
                 "/usr/share/groff/*", "/usr/share/linda/*", "/usr/share/lintian/*")
SLIM_KEEPS = ("/usr/share/doc/*/copyright",)
BASE_PACKAGES = "python3,python3-venv,python-is-python3,ca-certificates"
MIRROR = "http://deb.debian.org/debian"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
IMAGES = {"operator": "localhost/kubeinfer-operator:dev", "runtime-cpu": "localhost/kubeinfer-runtime:cpu",
          "runtime-gpu": "localhost/kubeinfer-runtime:gpu"}
# Each image's Dockerfile and target (None: the last stage).
BUILDS = {"operator": ("Dockerfile.operator", None), "runtime-cpu": ("Dockerfile.runtime", "cpu"),
          "runtime-gpu": ("Dockerfile.runtime", "gpu")}
TOOLS = ("buildah", "podman", "runc", "debootstrap")
# The one line `kubeinfer serve`/`fetch`/`operator` prints before exiting 1 (its cause may span more lines).
KUBEINFER_ERROR = r"^kubeinfer [\w-]+: "
# vfs copies every layer in full: a first gpu runtime build peaked at ~48 GB, a rebuild ~20 GB; an operator build
# ~1.5 GB.
MIN_FREE_GB = {"operator": 3, "runtime-cpu": 4, "runtime-gpu": 25}
STORAGE_DIR = Path("/var/lib/containers")


class Failure(Exception):
    """One line for the user: which image, which step, why."""


def rel(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.relative_to(REPO))
    return str(path)


def say(message: str) -> None:
    print(f"images: {message}", flush=True)


def last_line(text: str, pattern: str | None = None) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if pattern:
        lines = [line for line in lines if re.search(pattern, line)] or lines
    return lines[-1] if lines else "(no output)"


def shorten(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shorten_middle(text: str, limit: int = 200) -> str:
    """Keep both ends: a wrapped error says what failed first and why last ('...: no space left on device')."""
    if len(text) <= limit:
        return text
    head = limit // 3
    return f"{text[:head]} ... {text[-(limit - head - 5):]}"


def run_logged(image: str, step: str, command: Sequence[str], log_name: str, timeout: float | None = None) -> str:
    """Run a command with its output in .cache/images/logs/LOG_NAME.log; on failure one line names the step."""
    LOGS.mkdir(parents=True, exist_ok=True)
    log = LOGS / f"{log_name}.log"
    with log.open("w") as out:
        out.write(f"$ {shlex.join(command)}\n")
        out.flush()
        try:
            proc = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  cwd=REPO, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise Failure(f"{image}: {step} took over {timeout:.0f} s (log: {rel(log)})") from None
    text = log.read_text(errors="replace")
    if proc.returncode != 0:
        raise Failure(f"{image}: {step} failed: {shorten_middle(last_line(text, r'(?i)error'))} (log: {rel(log)})")
    return text


def capture(command: Sequence[str], timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run and capture; with vfs, starting a container copies the whole image first (a minute for the runtime)."""
    try:
        return subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise Failure(f"{shorten(shlex.join(command), 120)} took over {timeout:.0f} s") from None


def image_id(name: str) -> str | None:
    proc = capture([*PODMAN, "image", "inspect", "--format", "{{.Id}}", name])
    return proc.stdout.strip() if proc.returncode == 0 else None


def image_size(name: str) -> int:
    return int(capture([*PODMAN, "image", "inspect", "--format", "{{.Size}}", name]).stdout.strip())


def check_tools() -> None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        raise Failure(f"setup: missing {', '.join(missing)} (bash scripts/install-test-tools.sh installs them)")
    if os.geteuid() != 0:
        raise Failure("setup: buildah with the vfs driver and debootstrap need root here")


# --- the base -------------------------------------------------------------------------------------------------


def slim(rootfs: Path) -> None:
    """Make ``rootfs`` as slim as debian:bookworm-slim: dpkg told to leave out documentation, manuals and
    translations (``SLIM_EXCLUDES``) from now on, and those already installed removed, copyright files kept."""
    rules = [f"path-exclude {pattern}" for pattern in SLIM_EXCLUDES] + [f"path-include {p}" for p in SLIM_KEEPS]
    (rootfs / "etc" / "dpkg" / "dpkg.cfg.d" / "slim").write_text("\n".join(rules) + "\n")
    for pattern in SLIM_EXCLUDES:
        for path in rootfs.glob(pattern.lstrip("/")):
            if path.is_dir() and not path.is_symlink():
                for inner in sorted(path.rglob("*"), reverse=True):
                    if inner.name != "copyright" and (inner.is_file() or inner.is_symlink()):
                        inner.unlink()
                    elif inner.is_dir() and not any(inner.iterdir()):
                        inner.rmdir()
                if not any(path.iterdir()):
                    path.rmdir()
            elif path.name != "copyright":
                path.unlink()


def ensure_base() -> str:
    """The stand-in for python:3.11-slim-bookworm: Debian bookworm minbase with Python 3.11, as slim as
    debian:bookworm-slim, built once."""
    if image_id(BASE_TAG):
        say(f"base {BASE_TAG} (cached)")
        return BASE_TAG
    start = time.monotonic()
    rootfs = WORK / "base-rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    run_logged("base", f"debootstrap bookworm ({BASE_PACKAGES})",
               ["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm", str(rootfs), MIRROR],
               "base-debootstrap", timeout=1800)
    for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for path in (rootfs / leftover).glob("*"):
            if path.is_file() and path.name != "lock":
                path.unlink()
    slim(rootfs)
    container = run_logged("base", "buildah from scratch", ["buildah", *STORAGE, "from", "scratch"],
                           "base-from").strip().splitlines()[-1]
    try:
        run_logged("base", "copy the root filesystem", ["buildah", *STORAGE, "copy", container, f"{rootfs}/", "/"],
                   "base-copy", timeout=1800)
        run_logged("base", "buildah config", [
            "buildah", *STORAGE, "config", "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--env", "LANG=C.UTF-8", "--cmd", "python3", container], "base-config")
        run_logged("base", f"commit {BASE_TAG}", ["buildah", *STORAGE, "commit", "--rm", container, BASE_TAG],
                   "base-commit", timeout=1800)
    finally:
        capture(["buildah", *STORAGE, "rm", container])
        shutil.rmtree(rootfs, ignore_errors=True)
    say(f"base {BASE_TAG} built in {time.monotonic() - start:.0f} s, {image_size(BASE_TAG) / 1e6:.0f} MB")
    return BASE_TAG


# --- building -------------------------------------------------------------------------------------------------

STEP_LINE = re.compile(r"^(\[\d+/\d+\] )?STEP \d+/\d+: ")


def failed_step(text: str) -> str:
    """'RUN ...' of the last Dockerfile step buildah started, from its 'STEP n/m: INSTRUCTION' lines."""
    steps = [line.strip() for line in text.splitlines() if STEP_LINE.match(line.strip())]
    return shorten(steps[-1], 110) if steps else "before the first step"


def build_reason(text: str) -> str:
    error = last_line(text, r"(?i)^error|error:|exit status")
    match = re.search(r'(exit status \d+|error building at STEP "[^"]{0,60})', error)
    if "exit status" in error:
        return re.search(r"exit status \d+", error).group(0)  # type: ignore[union-attr]
    return shorten(match.group(0) if match else error, 200)


def build(name: str, dockerfile: Path, base: str, pip_cache: Path) -> None:
    tag = IMAGES[name]
    target = BUILDS[name][1]
    if base.startswith("localhost/") and image_id(base) is None:
        raise Failure(f"{name}: FROM ${{BASE_IMAGE}} of {rel(dockerfile)}: base image {base} not found")
    before = image_id(tag)
    pip_cache.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    command = ["buildah", *STORAGE, "bud", "--layers", "--force-rm", "--format", "docker", "--isolation", "chroot",
               "--network", "host", "--volume", f"{CA_BUNDLE}:{CA_BUNDLE}:ro",
               "--volume", f"{pip_cache}:/root/.cache/pip", "--build-arg", f"BASE_IMAGE={base}",
               *(["--target", target] if target else []), "--file", str(dockerfile), "--tag", tag, str(REPO)]
    LOGS.mkdir(parents=True, exist_ok=True)
    log = LOGS / f"{name}-build.log"
    with log.open("w") as out:
        out.write(f"$ {shlex.join(command)}\n")
        out.flush()
        proc = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO)
    text = log.read_text(errors="replace")
    if proc.returncode != 0:
        step = failed_step(text)
        if step.partition(": ")[2].startswith("FROM"):
            raise Failure(f"{name}: FROM ${{BASE_IMAGE}} of {rel(dockerfile)}: base image {base} could not be "
                          f"used: {shorten_middle(last_line(text, r'(?i)error'))} (log: {rel(log)}){disk_note()}")
        if step == "before the first step":
            raise Failure(f"{name}: {rel(dockerfile)}: {shorten_middle(last_line(text, r'(?i)error'))} "
                          f"(log: {rel(log)}){disk_note()}")
        raise Failure(f"{name}: {rel(dockerfile)} {failed_step(text)} failed: {build_reason(text)} "
                      f"(log: {rel(log)})")
    after = image_id(tag)
    if before and after != before:
        capture([*PODMAN, "rmi", before])  # the previous build of the tag; kept if something still uses it
    cached = sum(1 for line in text.splitlines() if "Using cache" in line)
    say(f"{name}: built {tag} in {time.monotonic() - start:.0f} s ({cached} cached steps), "
        f"{image_size(tag) / 1e6:.0f} MB")
    removed = drop_stale_layers(name, text)
    if removed:
        say(f"{name}: removed {removed} layers of its previous build that this build no longer uses")


def free_bytes() -> int:
    return shutil.disk_usage(STORAGE_DIR if STORAGE_DIR.exists() else "/").free


def disk_note() -> str:
    """Appended to a build failure when the disk is nearly full: the usual cause of vfs errors with no clear text."""
    free = free_bytes()
    return f"; only {free / 1e9:.1f} GB free for {STORAGE_DIR}" if free < 5e9 else ""


def check_free_space(name: str) -> None:
    free = free_bytes()
    if free < MIN_FREE_GB[name] * 1e9:
        first = " (~50 GB the first time)" if name == "runtime-gpu" else ""
        raise Failure(f"{name}: build needs at least {MIN_FREE_GB[name]} GB free for {STORAGE_DIR}{first}, "
                      f"{free / 1e9:.1f} GB left")


# One line per Dockerfile step: '--> Using cache <64 hex>' then '--> <11 hex>', or just '--> <11 hex>'.
LAYER_LINE = re.compile(r"^--> (?:Using cache )?([0-9a-f]{11,64})$")


def built_layers(text: str) -> set[str]:
    """The image ids (first 11 hex digits) a build used or made for each step, from buildah's log."""
    return {match.group(1)[:11] for line in text.splitlines() if (match := LAYER_LINE.match(line.strip()))}


def drop_stale_layers(name: str, text: str) -> int:
    """Remove the ids of NAME's previous build that this build and the other image's last build do not use.

    Removal is never forced, so a layer another image still stands on stays; children go before parents.
    """
    record = WORK / f"{name}-layers.txt"
    current = built_layers(text)
    previous = set(record.read_text().split()) if record.exists() else set()
    kept = set(current)
    for other in WORK.glob("*-layers.txt"):
        if other != record:
            kept |= set(other.read_text().split())
    stale = previous - kept
    removed = 0
    while stale:
        gone = {layer for layer in sorted(stale) if capture([*PODMAN, "rmi", layer]).returncode == 0}
        if not gone:
            break  # the rest is in use (a child image, a container) or already gone
        removed += len(gone)
        stale -= gone
    WORK.mkdir(parents=True, exist_ok=True)
    record.write_text("\n".join(sorted(current)) + "\n")
    return removed


# The cpu image's promise: none of these can be imported there.
NOT_IN_CPU_IMAGE = ("torch", "torchvision", "ultralytics", "onnx")


def check_contents(name: str) -> None:
    """No compiler, no pip in the venv, no pip cache or build leftovers in the final image; in the cpu image, no
    torch."""
    script = ("for tool in gcc cc make /opt/kubeinfer/bin/pip; do command -v $tool && exit 1; done; "
              "for path in /root/.cache /src /out; do test -e $path && echo $path && exit 1; done; "
              "test -z \"$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v -e lock -e partial)\" || exit 1; "
              "kubeinfer --help >/dev/null")
    if name == "runtime-cpu":
        script += ("; python -c 'import importlib.util, sys; found = [m for m in sys.argv[1:] if "
                   "importlib.util.find_spec(m)]; print(*found); sys.exit(bool(found))' " + " ".join(NOT_IN_CPU_IMAGE))
    proc = capture([*PODMAN, "run", "--rm", "--network", "host", *ULIMITS, "--entrypoint", "sh", IMAGES[name], "-c",
                    script])
    if proc.returncode != 0:
        raise Failure(f"{name}: contents check failed: found {last_line(proc.stdout + proc.stderr)} in the image")
    no_torch = f"; none of {', '.join(NOT_IN_CPU_IMAGE)}" if name == "runtime-cpu" else ""
    say(f"{name}: no compiler, pip, pip cache, apt lists or sources in the image{no_torch}; `kubeinfer --help` runs")


# --- running as the pods do -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_operator() -> None:
    """The chart's operator pod: its uid/gid, read-only root, /tmp an emptyDir, the image's entrypoint."""
    import yaml

    values = yaml.safe_load((REPO / "charts" / "kubeinfer" / "values.yaml").read_text())["operator"]
    command = [*PODMAN, "run", "--rm", "--network", "host", "--read-only", "--read-only-tmpfs=false",
               "--user", f"{values['runAsUser']}:{values['runAsGroup']}", "--cap-drop", "ALL",
               "--security-opt", "no-new-privileges", "--tmpfs", "/tmp:rw,mode=1777", *ULIMITS,
               IMAGES["operator"], "--help"]
    proc = capture(command)
    if proc.returncode != 0 or "usage:" not in proc.stdout:
        raise Failure(f"operator: container (kubeinfer operator --help) exited with {proc.returncode} at start: "
                      f"{shorten(last_line(proc.stderr + proc.stdout))}")
    say(f"operator: `kubeinfer operator --help` ran as uid {values['runAsUser']} on a read-only root filesystem")


CLUSTER_SCRIPT = REPO / "scripts" / "cluster" / "localcluster.py"
CLUSTER_BIN = REPO / ".cache" / "cluster" / "bin"


def cluster_built() -> bool:
    """The local control plane (make cluster) is there and its binaries are built (building takes ~20 min)."""
    return CLUSTER_SCRIPT.is_file() and any(
        not path.parent.name.endswith(".partial") for path in CLUSTER_BIN.glob("*/kube-apiserver"))


@contextlib.contextmanager
def local_cluster() -> Iterator[Path]:
    """`localcluster.py up` in its own state folder; yields its admin kubeconfig, stops it afterwards."""
    state = WORK / "cluster"
    LOGS.mkdir(parents=True, exist_ok=True)
    log = (LOGS / "operator-cluster.log").open("w")
    process = subprocess.Popen([sys.executable, str(CLUSTER_SCRIPT), "up", "--state", str(state)], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            log.flush()
            if line.startswith("export KUBECONFIG="):
                break
        else:
            process.wait(timeout=60)
            raise Failure(f"operator: the local control plane did not start: "
                          f"{shorten(last_line((LOGS / 'operator-cluster.log').read_text()))} "
                          f"(log: {rel(LOGS / 'operator-cluster.log')})")
        yield state / "kubeconfig"
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def reconcile_with_cluster() -> None:
    """The operator image, run as the chart runs it, against the local control plane: an InferenceService
    gets its Deployment (the fake kubelets run no real containers; `kubeinfer operator` does the real work)."""
    import yaml
    from kubernetes import client, config

    values = yaml.safe_load((REPO / "charts" / "kubeinfer" / "values.yaml").read_text())["operator"]
    start = time.monotonic()
    with local_cluster() as kubeconfig:
        api = config.new_client_from_config(config_file=str(kubeconfig))
        crd = yaml.safe_load((REPO / "crds" / "inferenceservices.kubeinfer.io.yaml").read_text())
        client.ApiextensionsV1Api(api).create_custom_resource_definition(crd)
        mounted = WORK / "operator-kubeconfig"
        shutil.copyfile(kubeconfig, mounted)
        mounted.chmod(0o644)
        name = f"kubeinfer-images-operator-{os.getpid()}"
        command = [*PODMAN, "run", "--detach", "--name", name, "--network", "host", "--read-only",
                   "--read-only-tmpfs=false", "--user", f"{values['runAsUser']}:{values['runAsGroup']}",
                   "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--tmpfs", "/tmp:rw,mode=1777",
                   *ULIMITS, "--volume", f"{mounted}:/etc/kubeinfer/kubeconfig:ro",
                   "--env", "KUBECONFIG=/etc/kubeinfer/kubeconfig", IMAGES["operator"], "--namespace", "default",
                   f"--runtime-gpu-image={IMAGES['runtime-gpu']}", f"--runtime-cpu-image={IMAGES['runtime-cpu']}",
                   "--log-format=plain", f"--metrics-port={free_port()}",
                   f"--liveness-port={free_port()}"]
        proc = capture(command)
        if proc.returncode != 0:
            raise Failure(f"operator: container could not start: {shorten_middle(last_line(proc.stderr))}")
        try:
            time.sleep(3)  # kopf starts its watches; an object created before is still seen (it lists first)
            client.CustomObjectsApi(api).create_namespaced_custom_object(
                "kubeinfer.io", "v1alpha1", "default", "inferenceservices",
                {"apiVersion": "kubeinfer.io/v1alpha1", "kind": "InferenceService", "metadata": {"name": "demo"},
                 "spec": {"task": "detect", "model": {"uri": "pvc://models/detector.pt"}}})
            apps = client.AppsV1Api(api)
            deadline = time.monotonic() + 180
            while True:
                running = capture([*PODMAN, "inspect", "--format", "{{.State.Running}} {{.State.ExitCode}}", name])
                if running.stdout.split()[:1] == ["false"]:
                    logs = capture([*PODMAN, "logs", name])
                    raise Failure(f"operator: container exited with {running.stdout.split()[-1]} against the local "
                                  f"control plane: {shorten(last_line(logs.stdout + logs.stderr, KUBEINFER_ERROR))}")
                try:
                    deployment = apps.read_namespaced_deployment("demo", "default")
                    break
                except client.ApiException as exc:
                    if exc.status != 404:
                        raise
                if time.monotonic() > deadline:
                    logs = capture([*PODMAN, "logs", name])
                    raise Failure(f"operator: no Deployment for InferenceService demo within 180 s: "
                                  f"{shorten(last_line(logs.stdout + logs.stderr, KUBEINFER_ERROR))}")
                time.sleep(1)
            # a .pt detector without GPUs: the cpu image serves it once the gpu image's init container exported it
            pod = deployment.spec.template.spec
            image = pod.containers[0].image
            exporter = [c.image for c in pod.init_containers or [] if c.name == "export"]
            if image != IMAGES["runtime-cpu"] or exporter != [IMAGES["runtime-gpu"]]:
                raise Failure(f"operator: the Deployment runs {image} exported by {exporter or 'nothing'}, not "
                              f"--runtime-cpu-image {IMAGES['runtime-cpu']} exported by {IMAGES['runtime-gpu']}")
            phase = "?"
            for _ in range(30):
                status = client.CustomObjectsApi(api).get_namespaced_custom_object(
                    "kubeinfer.io", "v1alpha1", "default", "inferenceservices", "demo").get("status") or {}
                phase = status.get("phase", "?")
                if phase not in ("?", "Pending"):
                    break
                time.sleep(1)
        finally:
            capture([*PODMAN, "rm", "--force", name])
    say(f"operator: reconciled InferenceService demo on the local control plane in {time.monotonic() - start:.0f} s "
        f"(Deployment demo running {image}, phase {phase})")


@contextlib.contextmanager
def serve_directory(directory: Path) -> Iterator[int]:
    """A loopback HTTP server for the demo model: what a model URL points at."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def rendered_pod(model_url: str, images: str | tuple[str, str], frontends: int = 1) -> dict[str, Any]:
    """The pod the operator renders for a detect InferenceService of this model URL: with one image, that image
    for everything; with (cpu image, gpu image), the operator's own choice between them."""
    from kubeinfer.operator.render import Owner, RuntimeDefaults, render_deployment
    from kubeinfer.operator.spec import parse_spec

    spec = parse_spec({"task": "detect", "model": {"uri": model_url}, "grpc": {"frontends": frontends}})
    defaults = RuntimeDefaults.single(images) if isinstance(images, str) else RuntimeDefaults(
        image=images[1], cpu_image=images[0])
    deployment = render_deployment(Owner("demo", "default", "0"), spec, defaults)
    return deployment["spec"]["template"]["spec"]


def podman_run_args(pod: dict[str, Any], container: dict[str, Any], volumes: dict[str, Path]) -> list[str]:
    """The podman flags for one container of a pod spec: user, read-only root, capabilities, env, mounts."""
    security = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    args = ["--network", "host", "--user", f"{security['runAsUser']}:{security['runAsGroup']}", *ULIMITS]
    if security.get("readOnlyRootFilesystem"):
        args += ["--read-only", "--read-only-tmpfs=false"]
    if security.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    for capability in security.get("capabilities", {}).get("drop", []):
        args += ["--cap-drop", capability]
    for variable in container.get("env", []):
        args += ["--env", f"{variable['name']}={variable['value']}"]
    for mount in container.get("volumeMounts", []):
        suffix = ":ro" if mount.get("readOnly") else ""
        args += ["--volume", f"{volumes[mount['name']]}:{mount['mountPath']}{suffix}"]
    args += ["--entrypoint", json.dumps(container["command"]), container["image"]]
    return args


def replace_flag(args: list[str], flag: str, value: str) -> list[str]:
    out = list(args)
    out[out.index(flag) + 1] = value
    return out


def demo_model_for(name: str) -> Path:
    """What the image serves: the demo detector's .pt for the gpu image, its ONNX export for the cpu image (made
    here, with the project's venv, as `kubeinfer export` makes it)."""
    if not DEMO_MODEL.is_file():
        raise Failure(f"{name}: no demo model at {rel(DEMO_MODEL)} "
                      f"(.venv/bin/kubeinfer demo --out {rel(DEMO_MODEL)} makes it; make images does)")
    if name == "runtime-gpu":
        return DEMO_MODEL
    from kubeinfer.runtime.models.backend import onnx_export

    exported = WORK / "models" / "detector.onnx"
    if not exported.is_file():
        exported.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(onnx_export(DEMO_MODEL, WORK / "exports", None), exported)
    return exported


def run_runtime(name: str) -> None:
    """The runtime image run as the operator renders its pod: one process, then with 2 frontend processes."""
    model = demo_model_for(name)
    for frontends in (1, 2):
        run_runtime_pod(name, model, IMAGES[name], frontends)


def run_exported_detector() -> None:
    """Both runtime images as the operator renders a .pt detector without GPUs: fetched by the cpu image, exported to
    ONNX by the gpu image's `kubeinfer export`, served by the cpu image."""
    if not DEMO_MODEL.is_file():
        raise Failure(f"runtime-cpu+gpu: no demo model at {rel(DEMO_MODEL)}")
    run_runtime_pod("runtime-cpu+gpu", DEMO_MODEL, (IMAGES["runtime-cpu"], IMAGES["runtime-gpu"]), 1)


def run_runtime_pod(name: str, model: Path, images: str | tuple[str, str], frontends: int) -> None:
    pods = WORK / "pod"
    shutil.rmtree(pods, ignore_errors=True)
    with serve_directory(model.parent) as port:
        pod = rendered_pod(f"http://127.0.0.1:{port}/{model.name}", images, frontends)
        security = pod["securityContext"]
        volumes: dict[str, Path] = {}
        for volume in pod["volumes"]:
            assert "emptyDir" in volume, volume  # the URL model needs no claims
            path = pods / volume["name"]
            path.mkdir(parents=True)
            os.chown(path, security["runAsUser"], security["fsGroup"])
            volumes[volume["name"]] = path
        for init in pod.get("initContainers", []):
            command = [*PODMAN, "run", "--rm", *podman_run_args(pod, init, volumes), *init["args"]]
            proc = capture(command)
            described = shlex.join(init["command"] + init["args"])
            if proc.returncode != 0:
                raise Failure(f"{name}: init container '{init['name']}' ({shorten(described, 80)}) exited with "
                              f"{proc.returncode}: {shorten(last_line(proc.stderr + proc.stdout, KUBEINFER_ERROR))}")
            if frontends == 1:
                say(f"{name}: init container '{init['name']}' ({init['image']}) ran: {shorten(described, 110)}")
    (container,) = pod["containers"]
    grpc_port, http_port = free_port(), free_port()
    args = replace_flag(container["args"], "--host", "127.0.0.1")
    args = replace_flag(replace_flag(args, "--grpc-port", str(grpc_port)), "--http-port", str(http_port))
    container_name = f"kubeinfer-images-{name}-{os.getpid()}"
    capture([*PODMAN, "rm", "--force", container_name])
    proc = capture([*PODMAN, "create", "--name", container_name, *podman_run_args(pod, container, volumes), *args])
    if proc.returncode != 0:
        raise Failure(f"{name}: container 'runtime' could not be created: {shorten_middle(last_line(proc.stderr))}")
    try:
        proc = capture([*PODMAN, "start", container_name])
        if proc.returncode != 0:
            raise Failure(f"{name}: container 'runtime' could not start: {shorten_middle(last_line(proc.stderr))}")
        wait_ready(name, container_name, http_port)
        ready = time.time()
        started = capture([*PODMAN, "inspect", "--format", "{{.State.StartedAt.Unix}}.{{.State.StartedAt.Nanosecond}}",
                           container_name]).stdout.strip()
        since_start = ready - float(started.split(".")[0]) - int(started.split(".")[1]) / 1e9
        say(f"{name}: `kubeinfer serve {shorten(shlex.join(args), 100)}` ready {since_start:.2f} s after the "
            "container started")
        if frontends > 1:  # /readyz answers from one frontend: give the others their hello too
            time.sleep(2)
        found = [exercise(name, grpc_port) for _ in range(1 if frontends == 1 else 8)]  # the kernel spreads them
        if frontends == 1:
            say(found[0])
        stop = capture([*PODMAN, "stop", "--time", "60", container_name])
        code = capture([*PODMAN, "inspect", "--format", "{{.State.ExitCode}}", container_name]).stdout.strip()
        if stop.returncode != 0 or code != "0":
            logs = capture([*PODMAN, "logs", container_name])
            raise Failure(f"{name}: container 'runtime' exited with {code} on SIGTERM (expected 0): "
                          f"{shorten(last_line(logs.stdout + logs.stderr, KUBEINFER_ERROR))}")
        say(f"{name}: SIGTERM drained and exited 0" if frontends == 1
            else f"{name}: with {frontends} frontends (in-memory /dev/shm mounted): served, drained, exited 0")
    finally:
        capture([*PODMAN, "rm", "--force", container_name])
        shutil.rmtree(pods, ignore_errors=True)


def wait_ready(name: str, container_name: str, http_port: int, timeout: float = 300) -> None:
    """Until /readyz answers 200 (polled every 10 ms, so the start time is measured to that); a container that
    exits first fails with its last line."""
    start = time.monotonic()
    checked = 0.0
    while time.monotonic() - start < timeout:
        with contextlib.suppress(OSError, urllib.error.URLError), urllib.request.urlopen(
                f"http://127.0.0.1:{http_port}/readyz", timeout=2) as response:
            if response.status == 200:
                return
        if time.monotonic() - checked > 1:
            checked = time.monotonic()
            state = capture([*PODMAN, "inspect", "--format", "{{.State.Running}} {{.State.ExitCode}}",
                             container_name]).stdout
            if state.split()[:1] == ["false"]:
                logs = capture([*PODMAN, "logs", container_name])
                raise Failure(f"{name}: container 'runtime' (kubeinfer serve) exited with {state.split()[-1]} at "
                              f"start: {shorten(last_line(logs.stdout + logs.stderr, KUBEINFER_ERROR))}")
        time.sleep(0.01)
    raise Failure(f"{name}: container 'runtime' not ready (/readyz) within {timeout:.0f} s")


def exercise(name: str, grpc_port: int) -> str:
    """One connection of its own: health, then Detect on a synthetic image; what was found."""
    import numpy as np

    from kubeinfer.clients import Client
    from kubeinfer.runtime.demo_models import synthetic_image

    image = synthetic_image(np.random.default_rng(7), size=128, max_rects=2)
    with Client(f"127.0.0.1:{grpc_port}", timeout=60, options=[("grpc.use_local_subchannel_pool", 1)]) as client:
        health = client.health()
        if health != "SERVING":
            raise Failure(f"{name}: gRPC health is {health}, not SERVING, after /readyz answered 200")
        (result,) = client.detect([image.pixels])
    if not result.detections:
        raise Failure(f"{name}: Detect found nothing on an image with {len(image.boxes)} rectangles")
    return f"{name}: gRPC health SERVING; Detect found {len(result.detections)} of {len(image.boxes)} rectangles"


# --- main -----------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=sorted(IMAGES), help="build (and run) only this image")
    parser.add_argument("--base-image", help=f"BASE_IMAGE for both builds (default: the local stand-in {BASE_TAG})")
    parser.add_argument("--dockerfile", action="append", default=[], metavar="NAME=PATH",
                        help="build NAME from another Dockerfile (default: Dockerfile.NAME)")
    parser.add_argument("--no-run", action="store_true", help="build only")
    parser.add_argument("--no-cluster", action="store_true",
                        help="skip running the operator image against the local control plane (make cluster)")
    args = parser.parse_args(argv)
    names = [name for name in IMAGES if name in (args.only or IMAGES)]
    dockerfiles = {name: REPO / dockerfile for name, (dockerfile, _) in BUILDS.items()}
    for item in args.dockerfile:
        name, _, path = item.partition("=")
        dockerfiles[name] = Path(path).resolve()
    pip_cache = Path(os.environ.get("PIP_CACHE_DIR") or Path.home() / ".cache" / "pip")
    total = time.monotonic()
    name = "setup"
    try:
        check_tools()
        base = args.base_image or ensure_base()
        for name in names:
            check_free_space(name)
            build(name, dockerfiles[name], base, pip_cache)
            if not args.no_run:
                check_contents(name)
                run_operator() if name == "operator" else run_runtime(name)
            if name == "runtime-gpu" and not args.no_run and image_id(IMAGES["runtime-cpu"]):
                run_exported_detector()
            if name == "operator" and not args.no_run and not args.no_cluster:
                if cluster_built():
                    reconcile_with_cluster()
                else:
                    say("operator: the local control plane is not built (make cluster-build): not run against it")
    except Failure as failure:
        print(f"make images: {failure}", file=sys.stderr, flush=True)
        return 1
    except Exception as exc:  # a client or API error while exercising a container: still one line
        print(f"make images: {name}: {type(exc).__name__}: {shorten(last_line(str(exc)))}", file=sys.stderr,
              flush=True)
        return 1
    say(f"done in {time.monotonic() - total:.0f} s: {', '.join(IMAGES[name] for name in names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
