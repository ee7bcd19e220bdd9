"""End to end on a real cluster (kind, k3d, or any other), skipped unless one is given.

    KUBEINFER_E2E_KUBECONFIG=~/.kube/kind-config      a kubeconfig whose current context is the cluster
    KUBEINFER_E2E_MODEL_URI=https://.../detector.pt   a detector the cluster's pods can read (http(s)://,
                                                      pvc://CLAIM/path in the test namespace, or a path in the image)
    KUBEINFER_E2E_IMAGE=registry/kubeinfer:TAG         the runtime image the nodes can pull (default: the
                                                      operator's default image)
    KUBEINFER_E2E_OPERATOR=external                    set when the operator already runs in the cluster
                                                      (the chart); otherwise the test runs it locally

It installs the CRD, checks that the real API server refuses bad specs through the CRD's OpenAPI and CEL rules
and accepts every example (server-side dry run), serves a detector, waits for Ready, runs Detect through
`kubectl port-forward`, deletes the resource and waits for the garbage collector to remove its children.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cluster_support import Kubectl, wait_established
from operator_support import CRD_PATH, EXAMPLES, OperatorProcess, eventually

from kubeinfer.clients import Client
from kubeinfer.runtime.demo_models import synthetic_image

KUBECONFIG = os.environ.get("KUBEINFER_E2E_KUBECONFIG", "")
pytestmark = pytest.mark.skipif(not KUBECONFIG, reason="set KUBEINFER_E2E_KUBECONFIG to run against a real cluster")


@pytest.fixture(scope="module")
def kubectl(tmp_path_factory: pytest.TempPathFactory) -> Kubectl:
    return Kubectl(Path(KUBECONFIG).expanduser(), tmp_path_factory.mktemp("kube-cache"))


@pytest.fixture(scope="module")
def namespace(kubectl: Kubectl) -> Iterator[str]:
    kubectl("apply", "-f", str(CRD_PATH))
    wait_established(kubectl)
    name = f"kubeinfer-e2e-{secrets.token_hex(3)}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_the_api_server_enforces_the_crd(kubectl: Kubectl, namespace: str) -> None:
    accepted = kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(EXAMPLES))
    assert accepted.stdout.count("created (server dry run)") == len(list(EXAMPLES.glob("*.yaml")))
    bad = {"apiVersion": "kubeinfer.io/v1alpha1", "kind": "InferenceService", "metadata": {"name": "bad"},
           "spec": {"task": "classify", "model": {"uri": "/m.pt"}, "window": 3}}
    refused = kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", stdin=json.dumps(bad), check=False)
    assert refused.returncode != 0
    assert "tasks classify and stream-classify need spec.labels" in refused.stderr
    assert "spec.window is only used by task stream-classify" in refused.stderr


def test_detect_through_a_real_cluster(kubectl: Kubectl, namespace: str, tmp_path: Path) -> None:
    model = os.environ.get("KUBEINFER_E2E_MODEL_URI")
    if not model:
        pytest.skip("set KUBEINFER_E2E_MODEL_URI to a detector the cluster can read")
    operator = None
    if os.environ.get("KUBEINFER_E2E_OPERATOR") != "external":
        args = ["--namespace", namespace, "--metrics-port", "0", "--liveness-port", "0"]
        if os.environ.get("KUBEINFER_E2E_IMAGE"):
            args += ["--runtime-image", os.environ["KUBEINFER_E2E_IMAGE"]]
        operator = OperatorProcess(args, Path(KUBECONFIG).expanduser(), tmp_path / "operator.log")
    forward = None
    try:
        spec = {"task": "detect", "model": {"uri": model}, "thresholds": {"confidence": 0.3}, "replicas": 1}
        if os.environ.get("KUBEINFER_E2E_IMAGE"):
            spec["image"] = os.environ["KUBEINFER_E2E_IMAGE"]
        resource = {"apiVersion": "kubeinfer.io/v1alpha1", "kind": "InferenceService",
                    "metadata": {"name": "e2e-detect"}, "spec": spec}
        kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(resource))
        waited = kubectl("wait", "-n", namespace, "--for=condition=Ready", "kisvc/e2e-detect", "--timeout=600s",
                         check=False)
        status = kubectl.json("get", "-n", namespace, "kisvc", "e2e-detect").get("status", {})
        assert waited.returncode == 0, (status, operator.logs() if operator else "")
        assert status["phase"] == "Ready" and status["endpoint"] == f"e2e-detect.{namespace}.svc:8001"
        forward = subprocess.Popen(["kubectl", "port-forward", "-n", namespace, "svc/e2e-detect", ":8001"],
                                   stdout=subprocess.PIPE, text=True, env=kubectl.env)
        assert forward.stdout is not None
        line = forward.stdout.readline()
        port = re.search(r"127\.0\.0\.1:(\d+)", line)
        assert port, line
        rng = np.random.default_rng(7)
        images = [synthetic_image(rng, 128).pixels for _ in range(3)]
        with Client(f"127.0.0.1:{port.group(1)}") as client:
            assert client.model_info().model_name == "e2e-detect"
            assert len(client.detect(images)) == 3
        kubectl("delete", "-n", namespace, "kisvc", "e2e-detect")
        eventually(lambda: kubectl("get", "-n", namespace, "deployment", "e2e-detect", check=False).returncode != 0,
                   timeout=120, what="the garbage collector to delete the Deployment")
    finally:
        if forward is not None:
            forward.terminate()
            forward.wait(10)
        if operator is not None:
            operator.stop()
