"""A cluster with a real node (scripts/cluster/realnode.py) for the tests that run pods for real.

``start_real_cluster`` starts the control plane with node ``real-0``: kubelet, containerd, kube-proxy, CoreDNS and
metrics-server. ``cluster.node`` is the RealNode: ``address`` (its InternalIP, the API server's and the kubelet's
address), ``load_image(name)`` (from buildah's storage into containerd), ``wait_metrics()``, ``machine_before``
(the machine's state before the node, after a killed run's leftovers were undone; compared after the teardown).
The state folder is fixed (.cache/real-node-tests), outside pytest's temporary folders, which pytest deletes
without unmounting what a killed kubelet left mounted there.

The test image is busybox-static and the grpc-health server (build.sh node) in an image FROM scratch, built with
buildah (``test_image``), so that it reaches containerd the way kubeinfer's images do.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from cluster_support import ROOT, ClusterError, Kubectl, LocalCluster, binaries

sys.path.insert(0, str(ROOT / "scripts" / "cluster"))  # as cluster_support does

import nodehost
import realnode
from nodeimages import BUILDAH
from operator_support import eventually
from realnode import DNS_SERVICE_IP, NODE_NAME, REAL_NODE_LABEL

__all__ = ["DNS_SERVICE_IP", "NODE_NAME", "REAL_NODE_LABEL", "build_test_image", "condition", "events",
           "image_with_top_layer", "nodehost", "pod_exec", "pods", "ready_pods", "remove_image", "require_real_node",
           "start_real_cluster", "wait_until"]

STATE = ROOT / ".cache" / "real-node-tests"
TEST_IMAGE_REPOSITORY = "localhost/kubeinfer-node-test"
BUSYBOX = Path("/bin/busybox")
CONTENT_LABEL = "kubeinfer.test.content"
RECIPE = "busybox applets, grpc-health, /etc, /tmp 1777"


def _ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need(reason: str) -> None:
    """Fail under CI (scripts/install-test-tools.sh must have run there), skip elsewhere."""
    message = f"no real node: {reason}"
    if _ci():
        pytest.fail(message)
    pytest.skip(message)


def require_real_node() -> tuple[Path, Path]:
    """What a real node needs here (root, the Debian tools, no other real node, the binaries, built once and
    cached): the control plane's and the node's binary folders."""
    if os.geteuid() != 0:
        need("the kubelet and containerd run as root")
    missing = realnode.missing_tools() + [t for t in ("buildah",) if shutil.which(t) is None]
    if missing:
        need(f"missing {', '.join(missing)} (bash scripts/install-test-tools.sh real_node)")
    if nodehost.lock_held():
        need("another real node runs on this machine (make cluster-down stops one of make cluster REAL_NODE=1)")
    try:
        return binaries(build=True), realnode.node_binaries(build=True)
    except (ClusterError, nodehost.NodeHostError) as exc:
        need(str(exc))
        raise


def start_real_cluster(state: Path = STATE, load_project_images: bool = False) -> LocalCluster:
    """Build (once, cached) and start a cluster with a real node."""
    bin_dir, node_bin = require_real_node()
    state.mkdir(parents=True, exist_ok=True)
    cluster = LocalCluster(state, bin_dir, real_node=True, node_bin=node_bin,
                           load_project_images=load_project_images)
    return cluster.start()


# -- the test image ---------------------------------------------------------------------------------------------
def _content_hash(files: list[Path]) -> str:
    """What the test image is made of: its files and this module's recipe (RECIPE changes with it)."""
    digest = hashlib.sha256(RECIPE.encode())
    for path in files:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _buildah(*args: str) -> str:
    done = subprocess.run([*BUILDAH, *args], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise AssertionError(f"buildah {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def _label(image: str) -> str | None:
    """The test image's content label (buildah 1.28's templates have no `json`)."""
    done = subprocess.run([*BUILDAH, "inspect", "--type", "image", "--format",
                           f'{{{{index .OCIv1.Config.Labels "{CONTENT_LABEL}"}}}}', image],
                          capture_output=True, text=True, timeout=60)
    return done.stdout.strip() or None if done.returncode == 0 else None


def build_test_image(node_bin: Path, tag: str = "1") -> str:
    """busybox (every applet) and grpc-health FROM scratch, in buildah's storage; rebuilt when its files change."""
    name = f"{TEST_IMAGE_REPOSITORY}:{tag}"
    files = [BUSYBOX, node_bin / "grpc-health"]
    content = _content_hash(files)
    if _label(name) == content:
        return name
    remove_image(name)  # an older build: no untagged copies pile up in the shared storage
    with tempfile.TemporaryDirectory() as folder:
        rootfs = Path(folder)
        (rootfs / "bin").mkdir()
        for path in files:
            shutil.copy2(path, rootfs / "bin" / path.name)
        applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True).stdout
        for applet in applets.split():
            if applet != "busybox":
                (rootfs / "bin" / applet).symlink_to("busybox")
        (rootfs / "etc").mkdir()
        (rootfs / "tmp").mkdir()
        (rootfs / "tmp").chmod(0o1777)  # mkdir's mode goes through the umask
        container = _buildah("from", "scratch")
        try:
            _buildah("copy", container, str(rootfs), "/")
            _buildah("config", "--env", "PATH=/bin", "--cmd", '["sh"]', "--label", f"{CONTENT_LABEL}={content}",
                     container)
            _buildah("commit", "--quiet", "--rm", container, name)
        except BaseException:
            subprocess.run([*BUILDAH, "rm", container], capture_output=True)
            raise
    return name


def image_with_top_layer(base: str, tag: str, text: str) -> str:
    """``base`` plus one small layer holding /etc/top.txt: a rebuild that changed only the top layer."""
    name = f"{TEST_IMAGE_REPOSITORY}:{tag}"
    container = _buildah("from", base)
    try:
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as top:
            top.write(text + "\n")  # a line: containerd holds back a partial line until its end
            top.flush()
            _buildah("copy", "--chmod", "0644", container, top.name, "/etc/top.txt")
        _buildah("commit", "--quiet", "--rm", container, name)
    except BaseException:
        subprocess.run([*BUILDAH, "rm", container], capture_output=True)
        raise
    return name


def remove_image(name: str) -> None:
    subprocess.run([*BUILDAH, "rmi", name], capture_output=True, timeout=120)


# -- pods -------------------------------------------------------------------------------------------------------
def wait_until(check: Any, what: str, timeout: float = 60.0, interval: float = 0.5) -> Any:
    """Poll ``check`` until it returns something truthy; that value. What a half-written object raises while the
    cluster settles (a missing key or item, a value not parsed yet) is one more try."""
    return eventually(check, timeout, interval, what, tolerate=(AssertionError, KeyError, IndexError, ValueError))


def condition(pod: dict[str, Any], kind: str) -> str:
    """A pod condition's status ("True", "False") or "" when it has none."""
    for item in (pod.get("status") or {}).get("conditions") or []:
        if item["type"] == kind:
            return item["status"]
    return ""


def pods(kubectl: Kubectl, namespace: str, selector: str) -> list[dict[str, Any]]:
    return kubectl.json("get", "pods", "-n", namespace, "-l", selector)["items"]


def ready_pods(kubectl: Kubectl, namespace: str, selector: str, count: int, timeout: float = 90.0
               ) -> list[dict[str, Any]]:
    """Wait until ``count`` pods match and all are Ready (by their kubelet's probes)."""
    def ready() -> list[dict[str, Any]]:
        found = pods(kubectl, namespace, selector)
        return found if len(found) == count and all(condition(p, "Ready") == "True" for p in found) else []

    return wait_until(ready, f"{count} ready pods {namespace}/{selector}", timeout)


def pod_exec(kubectl: Kubectl, namespace: str, pod: str, *command: str, container: str | None = None,
             check: bool = True) -> subprocess.CompletedProcess[str]:
    """``kubectl exec`` (through the API server to the kubelet and containerd)."""
    target = ["-c", container] if container else []
    return kubectl("exec", "-n", namespace, pod, *target, "--", *command, check=check)


def events(kubectl: Kubectl, namespace: str, pod: str) -> list[str]:
    items = kubectl.json("get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={pod}")
    return [f"{e.get('reason')}: {e.get('message')}" for e in items["items"]]
