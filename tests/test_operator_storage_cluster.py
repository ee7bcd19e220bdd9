"""The operator's fetch init containers, Secret volumes and ServiceAccount on the real API server.

The operator process renders an InferenceService whose fields come from S3 (an endpoint, a region, a Secret) and
GCS (a service-account key); the API server accepts the Deployment as rendered (env from secretKeyRef, a Secret
volume with items and a mode), the Deployment controller stamps pods from it, and a spec change that drops the
Secret and the ServiceAccount removes them from the pod template. What runs in the pods is
tests/test_storage_real_node.py's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cluster_operator_support import Operator, wait
from cluster_support import Api, Kubectl, LocalCluster, install_crd, new_namespace
from operator_support import deployment_path, is_path

from kubeinfer.operator.children import merge_patch_for
from kubeinfer.operator.render import Owner, RuntimeDefaults, render_deployment
from kubeinfer.operator.render_fetch import is_fetch_container
from kubeinfer.operator.spec import parse_spec


def secret_names(pod: dict[str, Any]) -> set[str]:
    """The Secrets each container uses, by container: env from secretKeyRef and mounted Secret volumes."""
    volumes = {v["name"]: v["secret"]["secretName"] for v in pod.get("volumes") or [] if "secret" in v}
    used = set()
    for container in [*(pod.get("initContainers") or []), *pod["containers"]]:
        for variable in container.get("env") or []:
            reference = (variable.get("valueFrom") or {}).get("secretKeyRef")
            if reference:
                used.add(f"{container['name']}:{reference['name']}")
        for mount in container.get("volumeMounts") or []:
            if mount["name"] in volumes:
                used.add(f"{container['name']}:{volumes[mount['name']]}")
    return used


def test_fetch_containers_secrets_and_service_account_on_the_api_server(kube_cluster: LocalCluster,
                                                                          tmp_path: Path) -> None:
    api = Api(kube_cluster)
    kubectl = Kubectl(kube_cluster.kubeconfig, tmp_path / "kube-cache")
    install_crd(kubectl)
    ns = new_namespace(api, "storage")
    api.create(f"/api/v1/namespaces/{ns}/serviceaccounts", {"apiVersion": "v1", "kind": "ServiceAccount",
                                                           "metadata": {"name": "model-reader"}})
    operator = Operator(kube_cluster.kubeconfig, tmp_path / "operator.log", "--namespace", ns,
                        "--runtime-cpu-image", "kubeinfer:cpu", "--runtime-gpu-image", "kubeinfer:gpu")
    try:
        spec: dict[str, Any] = {
            "task": "classify", "serviceAccountName": "model-reader",
            "model": {"uri": "s3://models/resnet/model.onnx?versionId=7", "credentials": {"secretName": "s3-reader"},
                      "storage": {"endpoint": "http://seaweedfs.storage:8333", "region": "us-east-1"}},
            "labels": {"uri": "gs://labels/resnet.txt", "credentials": {"secretName": "gcp-sa", "key": "sa.json"}},
        }
        kubectl.apply({"apiVersion": "kubeinfer.io/v1alpha1", "kind": "InferenceService",
                       "metadata": {"name": "stored", "namespace": ns}, "spec": spec})

        def template() -> dict[str, Any] | None:
            found = api.get(deployment_path(ns, "stored"))
            return found["spec"]["template"]["spec"] if found else None

        pod = wait(operator, template, "the Deployment")
        (fetch,) = [c for c in pod["initContainers"] if is_fetch_container(c["name"])]
        env = {e["name"]: e.get("value", e.get("valueFrom")) for e in fetch["env"]}
        assert env["AWS_ENDPOINT_URL"] == "http://seaweedfs.storage:8333" and env["AWS_REGION"] == "us-east-1"
        assert env["GOOGLE_APPLICATION_CREDENTIALS"].endswith("/key.json")
        assert secret_names(pod) == {"fetch:s3-reader", "fetch:gcp-sa"}  # the fetch container's, no one else's
        (volume,) = [v for v in pod["volumes"] if "secret" in v]
        assert volume["secret"] == {"secretName": "gcp-sa", "defaultMode": 0o440,
                                    "items": [{"key": "sa.json", "path": "key.json"}]}
        assert pod["serviceAccountName"] == "model-reader" and pod["automountServiceAccountToken"] is False
        # The live Deployment is what the operator renders: no field the API server fills in is patched away again.
        resource = api.get(is_path(ns, "stored"))
        owner = Owner("stored", ns, resource["metadata"]["uid"])
        defaults = RuntimeDefaults("kubeinfer:gpu", "kubeinfer:cpu")
        rendered = render_deployment(owner, parse_spec(resource["spec"]), defaults)
        assert merge_patch_for(rendered, api.get(deployment_path(ns, "stored"))) is None
        assert fetch["args"][2:] == ["model/model.onnx=s3://models/resnet/model.onnx?versionId=7",
                                     "labels/resnet.txt=gs://labels/resnet.txt"]

        # The Deployment controller makes pods from that template (admission accepts the Secret references).
        def stamped() -> list[dict[str, Any]] | None:
            listed = api.get(f"/api/v1/namespaces/{ns}/pods?labelSelector=kubeinfer.io%2Finferenceservice%3Dstored")
            return (listed or {}).get("items") or None

        (made,) = wait(operator, stamped, "a pod of the Deployment")
        assert secret_names(made["spec"]) == {"fetch:s3-reader", "fetch:gcp-sa"}
        assert made["spec"]["serviceAccountName"] == "model-reader"

        # Dropping the Secrets and the ServiceAccount takes them out of the template (nothing is left merged in).
        spec.pop("serviceAccountName")
        spec["model"] = {"uri": "s3://models/resnet/model.onnx?versionId=8"}
        spec["labels"] = {"uri": "gs://labels/resnet.txt"}
        kubectl.apply({"apiVersion": "kubeinfer.io/v1alpha1", "kind": "InferenceService",
                       "metadata": {"name": "stored", "namespace": ns}, "spec": spec})

        def updated() -> dict[str, Any] | None:
            current = template()
            return current if current and "versionId=8" in " ".join(current["initContainers"][0]["args"]) else None

        pod = wait(operator, updated, "the new template")
        assert secret_names(pod) == set()
        assert not [v for v in pod["volumes"] if "secret" in v]
        assert "serviceAccountName" not in pod and "serviceAccount" not in pod
    finally:
        operator.stop()
        kubectl("delete", "namespace", ns, "--wait=false", check=False)
