"""Helpers for the operator tests: kubectl against the emulator, the operator as a process, a tiny API client."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

ROOT = Path(__file__).resolve().parents[1]
CRD_PATH = ROOT / "crds" / "inferenceservices.kubeinfer.io.yaml"
EXAMPLES = ROOT / "examples"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))
KUBECTL = os.environ.get("KUBECTL", "kubectl")

T = TypeVar("T")


def load_yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


@functools.cache
def _crd_text() -> str:
    return CRD_PATH.read_text()


def load_crd() -> dict[str, Any]:
    return yaml.safe_load(_crd_text())


@functools.cache
def _schema_json() -> str:
    return json.dumps(load_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def crd_schema() -> dict[str, Any]:
    return json.loads(_schema_json())


@functools.cache
def _validator() -> Any:
    import jsonschema

    return jsonschema.Draft7Validator(strict_json_schema(crd_schema()))


def write_kubeconfig(path: Path, server: str, namespace: str = "default") -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
        "clusters": [{"name": "emulator", "cluster": {"server": server}}],
        "users": [{"name": "tester", "user": {"token": "emulated"}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester",
                                                      "namespace": namespace}}],
    }))
    return path


class Kubectl:
    """Real kubectl, pointed at a kubeconfig; the emulator serves no OpenAPI, hence --validate=false."""

    def __init__(self, kubeconfig: Path, cache_dir: Path) -> None:
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig), "KUBECACHEDIR": str(cache_dir)}

    def __call__(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([KUBECTL, *args], input=stdin, capture_output=True, text=True, env=self.env,
                              timeout=60)
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return done

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "-o", "json").stdout)


class Api:
    """Direct HTTP calls to the emulator, for what a kubelet or controller would write (status, pods)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def call(self, method: str, path: str, body: Any = None,
             content_type: str = "application/merge-patch+json") -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = content_type if method == "PATCH" else "application/json"
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def get(self, path: str) -> dict[str, Any] | None:
        status, body = self.call("GET", path)
        if status == 404:
            return None
        assert status == 200, (path, status, body)
        return body

    def patch(self, path: str, body: Any) -> dict[str, Any]:
        status, result = self.call("PATCH", path, body)
        assert status == 200, (path, status, result)
        return result

    def create(self, path: str, body: Any) -> dict[str, Any]:
        status, result = self.call("POST", path, body)
        assert status == 201, (path, status, result)
        return result

    def delete(self, path: str) -> int:
        return self.call("DELETE", path)[0]


def eventually(check: Callable[[], T | None], timeout: float = 15.0, interval: float = 0.05,
               what: str = "condition") -> T:
    """Poll until ``check`` returns something truthy; fail with the last value seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except AssertionError as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


class OperatorProcess:
    """`kubeinfer operator` in a subprocess, with its log kept for failure messages."""

    def __init__(self, args: list[str], kubeconfig: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        full_env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1", **(env or {})}
        full_env.pop("KUBERNETES_SERVICE_HOST", None)  # never mistake the test host for a pod
        self.process = subprocess.Popen([sys.executable, "-m", "kubeinfer", "operator", *args],
                                        stdout=self._log, stderr=subprocess.STDOUT, env=full_env)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()
        return int(self.process.returncode)


def is_path(namespace: str, name: str = "", subresource: str = "") -> str:
    path = f"/apis/kubeinfer.io/v1alpha1/namespaces/{namespace}/inferenceservices"
    return path + (f"/{name}" if name else "") + (f"/{subresource}" if subresource else "")


def deployment_path(namespace: str, name: str = "", subresource: str = "") -> str:
    path = f"/apis/apps/v1/namespaces/{namespace}/deployments"
    return path + (f"/{name}" if name else "") + (f"/{subresource}" if subresource else "")


def service_path(namespace: str, name: str = "") -> str:
    return f"/api/v1/namespaces/{namespace}/services" + (f"/{name}" if name else "")


def pod_path(namespace: str, name: str = "", subresource: str = "") -> str:
    path = f"/api/v1/namespaces/{namespace}/pods"
    return path + (f"/{name}" if name else "") + (f"/{subresource}" if subresource else "")


def mark_deployment(api: Api, namespace: str, name: str, ready: int, replicas: int | None = None) -> None:
    """Write a Deployment's status the way its controller does once `ready` pods pass their probes."""
    deployment = api.get(deployment_path(namespace, name))
    assert deployment is not None, f"no Deployment {namespace}/{name}"
    desired = int(deployment["spec"].get("replicas", 1))
    replicas = desired if replicas is None else replicas
    api.patch(deployment_path(namespace, name, "status"), {"status": {
        "observedGeneration": deployment["metadata"]["generation"],
        "replicas": replicas, "updatedReplicas": replicas, "readyReplicas": ready, "availableReplicas": ready,
        "unavailableReplicas": max(replicas - ready, 0),
        "conditions": [{"type": "Available", "status": "True" if ready >= desired else "False",
                        "reason": "MinimumReplicasAvailable" if ready >= desired else "MinimumReplicasUnavailable"},
                       {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}],
    }})


def runtime_pod(deployment: dict[str, Any], pod_name: str) -> dict[str, Any]:
    """A Pod as the ReplicaSet controller would create it from the Deployment's template."""
    template = deployment["spec"]["template"]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod_name, "namespace": deployment["metadata"]["namespace"],
                         "labels": dict(template["metadata"]["labels"]),
                         "annotations": dict(template["metadata"].get("annotations") or {})},
            "spec": template["spec"]}


# -- the CRD's schema as the API server applies it: defaults, strict field validation, CEL rules -----------
def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Structural defaulting: a missing field with a default gets it, then defaulting goes on inside it."""
    if isinstance(value, dict):
        value = dict(value)
        for key, sub in (schema.get("properties") or {}).items():
            if key not in value and "default" in sub:
                value[key] = json.loads(json.dumps(sub["default"]))
            if key in value:
                value[key] = apply_defaults(sub, value[key])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in value:
                if key not in (schema.get("properties") or {}):
                    value[key] = apply_defaults(extra, value[key])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        value = [apply_defaults(schema["items"], item) for item in value]
    return value


def strict_json_schema(schema: Any) -> Any:
    """The OpenAPI schema as JSON Schema, refusing unknown fields (kubectl's default strict field validation)."""
    if isinstance(schema, list):
        return [strict_json_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    converted = {key: strict_json_schema(value) for key, value in schema.items()
                 if not key.startswith("x-kubernetes-") and key != "default"}
    if (schema.get("type") == "object" and "properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        converted["additionalProperties"] = False
    if "properties" in schema:
        converted["properties"] = {key: strict_json_schema(value) for key, value in schema["properties"].items()}
    if "metadata" in converted.get("properties", {}) and converted["properties"]["metadata"].get("type") == "object":
        converted["properties"]["metadata"].pop("additionalProperties", None)
    return converted


@functools.cache
def _cel_program(rule: str) -> Any:
    import celpy

    environment = celpy.Environment()
    return environment.program(environment.compile(rule))


def cel_failures(schema: dict[str, Any], value: Any) -> list[str]:
    """Messages of the x-kubernetes-validations rules that ``value`` breaks, evaluated with cel-python."""
    import celpy

    failures: list[str] = []

    def walk(node: dict[str, Any], current: Any) -> None:
        for rule in node.get("x-kubernetes-validations") or []:
            program = _cel_program(rule["rule"])
            if not bool(program.evaluate({"self": celpy.json_to_cel(current)})):
                failures.append(rule.get("message", rule["rule"]))
        if isinstance(current, dict):
            for key, sub in (node.get("properties") or {}).items():
                if key in current:
                    walk(sub, current[key])
        elif isinstance(current, list) and isinstance(node.get("items"), dict):
            for item in current:
                walk(node["items"], item)

    walk(schema, value)
    return failures


def crd_verdict(obj: dict[str, Any]) -> list[str]:
    """Every reason the API server would refuse ``obj`` (empty when it would accept it)."""
    schema = crd_schema()
    defaulted = apply_defaults(schema, obj)
    validator = _validator()
    errors = [f"{'.'.join(str(p) for p in error.absolute_path)}: {error.message}"
              for error in validator.iter_errors(defaulted)]
    return errors or cel_failures(schema, defaulted)
