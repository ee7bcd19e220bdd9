"""Rendering s3:// and gs:// URIs: the fetch init containers, their environment and Secret mounts (pure).

Every rendered item is parsed by `kubeinfer fetch`'s own parser and every runtime path by `kubeinfer serve`'s, so
the two ends of the emptyDir agree. Secrets reach the fetch init containers only: no other container, init or
runtime, has an env var from a Secret or mounts a Secret volume.
"""

from __future__ import annotations

import argparse
from typing import Any

import kubernetes_validate
import pytest

from kubeinfer.operator.render import FETCH_ROOT, Owner, RuntimeDefaults, render_deployment
from kubeinfer.operator.render_fetch import GCS_CREDENTIALS_FILE, NodeCache, is_fetch_container
from kubeinfer.operator.spec import SpecError, parse_spec
from kubeinfer.runtime import fetch
from kubeinfer.runtime.commands import serve as serve_command

OWNER = Owner(name="svc", namespace="team-a", uid="6f1c3f5e-0000-4000-8000-000000000001")
DEFAULTS = RuntimeDefaults(image="registry.example.com/kubeinfer:1", cpu_image="registry.example.com/kubeinfer:1-cpu")
MINIO = {"endpoint": "http://minio.storage:9000", "region": "eu-west-1"}


def deployment(spec: dict[str, Any]) -> dict[str, Any]:
    rendered = render_deployment(OWNER, parse_spec(spec), DEFAULTS)
    for version in ("1.28", kubernetes_validate.latest_version()):
        kubernetes_validate.validate(rendered, version, strict=True)
    return rendered


def pod_spec(spec: dict[str, Any]) -> dict[str, Any]:
    return dict(deployment(spec)["spec"]["template"]["spec"])


def fetchers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in pod.get("initContainers") or [] if is_fetch_container(c["name"])]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env") or []}


def items_of(container: dict[str, Any]) -> dict[str, fetch.Item]:
    args = container["args"]
    assert args[:2] == ["--into", FETCH_ROOT]
    return {str(item.dest): item for item in (fetch.parse_item(text) for text in args[2:])}


def serve_paths(pod: dict[str, Any]) -> argparse.Namespace:
    """The runtime container's args through `kubeinfer serve`'s own parser."""
    parser = argparse.ArgumentParser(exit_on_error=False)
    serve_command.add_arguments(parser)
    return parser.parse_args(pod["containers"][0]["args"])


def assert_secrets_only_in_fetchers(pod: dict[str, Any]) -> None:
    secret_volumes = {v["name"] for v in pod["volumes"] if "secret" in v}
    for container in [*(pod.get("initContainers") or []), *pod["containers"]]:
        from_secrets = [e for e in container.get("env") or [] if "secretKeyRef" in (e.get("valueFrom") or {})]
        mounted = [m for m in container.get("volumeMounts") or [] if m["name"] in secret_volumes]
        if not is_fetch_container(container["name"]):
            assert not from_secrets and not mounted, container["name"]
        assert all(m.get("readOnly") for m in mounted)


def test_every_field_from_s3_with_an_endpoint_region_and_secret() -> None:
    s3 = {"storage": MINIO, "credentials": {"secretName": "models-reader"}}
    spec = {"task": "classify",
            "model": {"uri": "s3://models/resnet/model.onnx?versionId=3HL4kqtJlcpXroDTDmJ", **s3},
            "labels": {"uri": "s3://models/resnet/labels.txt#sha256=" + "a" * 64, **s3}}
    pod = pod_spec(spec)
    (init,) = fetchers(pod)
    items = items_of(init)
    assert set(items) == {"model/model.onnx", "labels/labels.txt"}
    assert items["model/model.onnx"].source is not None and items["model/model.onnx"].source.version == \
        "3HL4kqtJlcpXroDTDmJ"
    assert items["labels/labels.txt"].sha256 == "a" * 64
    env = env_of(init)
    assert env["AWS_ENDPOINT_URL"] == "http://minio.storage:9000" and env["AWS_REGION"] == "eu-west-1"
    assert env["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "models-reader", "key": "AWS_ACCESS_KEY_ID"}}
    assert env["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": "models-reader", "key": "AWS_SECRET_ACCESS_KEY"}}
    assert env["AWS_SESSION_TOKEN"] == {"secretKeyRef": {"name": "models-reader", "key": "AWS_SESSION_TOKEN",
                                                         "optional": True}}
    served = serve_paths(pod)
    assert str(served.model) == f"{FETCH_ROOT}/model/model.onnx"
    assert str(served.labels) == f"{FETCH_ROOT}/labels/labels.txt"
    assert pod["containers"][0]["image"] == DEFAULTS.cpu_image  # an ONNX model: the lean image fetches and serves
    assert init["image"] == DEFAULTS.cpu_image
    assert_secrets_only_in_fetchers(pod)


def test_every_field_from_gcs_with_a_service_account_key() -> None:
    gs = {"credentials": {"secretName": "gcp-sa", "key": "reader.json"}}
    for gallery in ({"embeddings": {"uri": "gs://models/faces/gallery.npz", **gs}},
                    {"baseData": {"uri": "gs://models/faces/people/", **gs}},
                    {"baseData": {"uri": "gs://models/faces/people.tar.gz?generation=17", **gs}}):
        spec = {"task": "recognize", "model": {"uri": "gs://models/faces/encoder.onnx", **gs},
                "labels": {"uri": "gs://models/faces/labels.txt", **gs}, **gallery}
        pod = pod_spec(spec)
        (init,) = fetchers(pod)
        items = items_of(init)
        env = env_of(init)
        (volume,) = [v for v in pod["volumes"] if "secret" in v]
        assert volume["secret"] == {"secretName": "gcp-sa", "defaultMode": 0o440,
                                    "items": [{"key": "reader.json", "path": GCS_CREDENTIALS_FILE}]}
        (mount,) = [m for m in init["volumeMounts"] if m["name"] == volume["name"]]
        assert env["GOOGLE_APPLICATION_CREDENTIALS"] == f"{mount['mountPath']}/{GCS_CREDENTIALS_FILE}"
        assert "STORAGE_EMULATOR_HOST" not in env and not any(k.startswith("AWS_") for k in env)
        served = serve_paths(pod)
        if "baseData" in gallery:
            assert items["base-data"].is_directory or items["base-data"].unpack
            assert str(served.base_data) == f"{FETCH_ROOT}/base-data"
        else:
            assert str(served.embeddings) == f"{FETCH_ROOT}/embeddings/gallery.npz"
        assert_secrets_only_in_fetchers(pod)


def test_a_gcs_emulator_endpoint_and_the_default_key() -> None:
    spec = {"task": "detect", "model": {"uri": "gs://models/m.onnx", "storage": {"endpoint": "http://gcs:4443"},
                                        "credentials": {"secretName": "sa"}}}
    pod = pod_spec(spec)
    (init,) = fetchers(pod)
    assert env_of(init)["STORAGE_EMULATOR_HOST"] == "http://gcs:4443"
    (volume,) = [v for v in pod["volumes"] if "secret" in v]
    assert volume["secret"]["items"] == [{"key": "key.json", "path": "key.json"}]


def test_a_model_folder_is_fetched_whole_and_served_from_its_file() -> None:
    spec = {"task": "detect", "model": {"uri": "s3://models/yolo/v3/", "file": "model.onnx"}}
    pod = pod_spec(spec)
    (init,) = fetchers(pod)
    (item,) = items_of(init).values()
    assert item.is_directory and str(item.dest) == "model"
    assert str(serve_paths(pod).model) == f"{FETCH_ROOT}/model/model.onnx"
    assert pod["containers"][0]["image"] == DEFAULTS.cpu_image  # the file's suffix picks the image
    assert env_of(init) == {"HOME": "/tmp"}  # no storage, no Secret: the cloud's defaults, the pod's identity


def test_stores_that_differ_get_a_fetch_container_each() -> None:
    other = {"storage": {"endpoint": "https://s3.other.example"}, "credentials": {"secretName": "other"}}
    spec = {"task": "classify",
            "model": {"uri": "s3://models/m.onnx", "credentials": {"secretName": "mine"}},
            "labels": {"uri": "s3://labels/l.txt", **other}}
    pod = pod_spec(spec)
    first, second = fetchers(pod)
    assert (first["name"], second["name"]) == ("fetch", "fetch-2")
    assert set(items_of(first)) == {"model/m.onnx"} and set(items_of(second)) == {"labels/l.txt"}
    assert env_of(first)["AWS_ACCESS_KEY_ID"]["secretKeyRef"]["name"] == "mine"
    assert env_of(second)["AWS_ACCESS_KEY_ID"]["secretKeyRef"]["name"] == "other"
    assert "AWS_ENDPOINT_URL" not in env_of(first)
    # An http download and a gs one join the first container: they need nothing the S3 setting conflicts with.
    spec["labels"] = {"uri": "gs://labels/l.txt"}
    (only,) = fetchers(pod_spec(spec))
    assert set(items_of(only)) == {"model/m.onnx", "labels/l.txt"}


def test_the_service_account_names_the_pods_identity_and_the_api_token_stays_unmounted() -> None:
    pod = pod_spec({"task": "detect", "model": {"uri": "s3://models/m.onnx"}, "serviceAccountName": "model-reader"})
    assert pod["serviceAccountName"] == pod["serviceAccount"] == "model-reader"  # the alias the server fills in
    assert pod["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in pod_spec({"task": "detect", "model": {"uri": "s3://models/m.onnx"}})


def test_a_pt_detector_from_s3_is_fetched_then_exported_without_secrets() -> None:
    spec = {"task": "detect", "model": {"uri": "s3://models/yolo.pt", "credentials": {"secretName": "s3"}}}
    pod = pod_spec(spec)
    names = [c["name"] for c in pod["initContainers"]]
    assert names == ["fetch", "export"]
    assert_secrets_only_in_fetchers(pod)


@pytest.mark.parametrize(("spec", "message"), [
    ({"task": "detect", "model": {"uri": "https://x.org/m.pt", "storage": MINIO}},
     "spec.model: storage and credentials are for s3:// and gs:// uris"),
    ({"task": "detect", "model": {"uri": "gs://models/m.pt", "storage": {"region": "eu-west-1"}}},
     "spec.model.storage.region is for s3:// uris"),
    ({"task": "detect", "model": {"uri": "s3://models/m.pt", "credentials": {"secretName": "s", "key": "k.json"}}},
     "spec.model.credentials.key (a service-account JSON's key) is for gs:// uris"),
    ({"task": "detect", "model": {"uri": "s3://models/m.pt", "credentials": {}}},
     "spec.model.credentials.secretName is required"),
    ({"task": "detect", "model": {"uri": "s3://models/yolo/"}}, "spec.model.file names the model file inside a folder"),
    ({"task": "detect", "model": {"uri": "s3://models/m.onnx", "file": "m.onnx"}}, "spec.model.file names the model"),
    ({"task": "classify", "model": {"uri": "/m.pt"}, "labels": {"uri": "gs://models/labels/"}},
     "spec.labels.uri: 'gs://models/labels/' is a folder"),
    ({"task": "recognize", "model": {"uri": "/m.pt"}, "baseData": {"uri": "s3://models/people.bin"}},
     "or an s3:// or gs:// folder ending in '/'"),
    ({"task": "detect", "model": {"uri": "s3://models/m.pt", "storage": {"endpoint": "minio:9000"}}},
     "spec.model.storage.endpoint: 'minio:9000' must match"),
    ({"task": "detect", "model": {"uri": "s3://models/m.pt?versionId="}}, "is not pvc://CLAIM/path"),
    ({"task": "detect", "model": {"uri": "gs://models/m.pt?versionId=3"}}, "is not pvc://CLAIM/path"),
    ({"task": "detect", "model": {"uri": "/m.pt"}, "serviceAccountName": "Reader"}, "spec.serviceAccountName"),
])
def test_bad_object_storage_specs_are_refused(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(spec)
    assert message in str(caught.value)


def test_the_node_cache_is_a_host_folder_only_the_fetch_containers_mount() -> None:
    defaults = RuntimeDefaults(image=DEFAULTS.image, cpu_image=DEFAULTS.cpu_image,
                               node_cache=NodeCache("/var/cache/kubeinfer", 5 * 1024**3))
    spec = parse_spec({"task": "classify", "model": {"uri": "s3://models/m.onnx"},
                       "labels": {"uri": "https://x.org/labels.txt"}})
    rendered = render_deployment(OWNER, spec, defaults)
    kubernetes_validate.validate(rendered, kubernetes_validate.latest_version(), strict=True)
    pod = rendered["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if "hostPath" in v]
    assert volume["hostPath"] == {"path": "/var/cache/kubeinfer", "type": "DirectoryOrCreate"}
    (init,) = fetchers(pod)
    assert init["args"][:6] == ["--into", FETCH_ROOT, "--cache", "/kubeinfer/node-cache", "--cache-max-bytes",
                                str(5 * 1024**3)]
    users = [c["name"] for c in [*pod["initContainers"], *pod["containers"]]
             if any(m["name"] == volume["name"] for m in c.get("volumeMounts") or [])]
    assert users == ["fetch"]
    # Only http downloads: no cache (it keys objects by their ETag and version), no host folder.
    web = parse_spec({"task": "detect", "model": {"uri": "https://x.org/m.onnx"}})
    assert not [v for v in render_deployment(OWNER, web, defaults)["spec"]["template"]["spec"]["volumes"]
                if "hostPath" in v]
