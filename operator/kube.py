"""The only module that talks to the Kubernetes API: get, create, JSON-merge-patch, delete and list, with retries.

A client and nothing more: it retries transient API errors (429, 5xx, connection failures) with backoff and turns
the rest into ``ApiError`` with the server's message. What the operator's children should look like and how a live
one is brought in line (create-or-patch, ownership) is ``children.py``'s.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kubeinfer.operator.spec import API_VERSION, PLURAL

log = logging.getLogger(__name__)

# (apiGroup, resource, verbs): exactly what the operator and kopf use, for the chart's ClusterRole.
RBAC_RULES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    # The custom resource: kopf lists/watches it and, only to wake a handler up after a retry delay, patches one
    # annotation (operator/bookkeeping.py); the operator reads it before re-creating a child and writes its status.
    ("kubeinfer.io", "inferenceservices", ("get", "list", "watch", "patch")),
    ("kubeinfer.io", "inferenceservices/status", ("patch",)),
    # Children carry ownerReferences with blockOwnerDeletion, which needs update on the owner's finalizers.
    ("kubeinfer.io", "inferenceservices/finalizers", ("update",)),
    # Children: watched to repair hand edits and to follow the rollout; HPA and PDB are deleted when unwanted.
    # A rollout (spec.rollout) adds a Deployment and a headless Service per revision, deleted with the revision,
    # and its traffic table, a ConfigMap.
    ("apps", "deployments", ("get", "list", "watch", "create", "patch", "delete")),
    ("", "services", ("get", "list", "watch", "create", "patch", "delete")),
    ("", "configmaps", ("get", "list", "watch", "create", "patch", "delete")),
    ("autoscaling", "horizontalpodautoscalers", ("get", "list", "watch", "create", "patch", "delete")),
    ("policy", "poddisruptionbudgets", ("get", "list", "watch", "create", "patch", "delete")),
    # KEDA ScaledObjects (autoscaling.engine keda), like HPAs; unused while KEDA's CRD is not installed.
    ("keda.sh", "scaledobjects", ("get", "list", "watch", "create", "patch", "delete")),
    # Gateway API routes with a rollout's weights (spec.rollout.gateway); unused while their CRDs are not installed.
    ("gateway.networking.k8s.io", "grpcroutes", ("get", "list", "watch", "create", "patch", "delete")),
    ("gateway.networking.k8s.io", "httproutes", ("get", "list", "watch", "create", "patch", "delete")),
    # Pods are only read (watched) to report crash loops and scheduling failures in status.
    ("", "pods", ("list", "watch")),
    # kopf: Kubernetes Events about each step; CRD discovery; namespace discovery with --namespace.
    ("", "events", ("create",)),
    ("apiextensions.k8s.io", "customresourcedefinitions", ("list", "watch")),
    ("", "namespaces", ("list", "watch")),
)

# Needed in addition when the operator runs with --peering (several replicas, one active): kopf's peering
# objects, cluster-wide (ClusterKopfPeering) or per watched namespace (KopfPeering).
PEERING_RBAC_RULES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("kopf.dev", "clusterkopfpeerings", ("get", "list", "watch", "patch")),
    ("kopf.dev", "kopfpeerings", ("get", "list", "watch", "patch")),
)

PLURALS: dict[str, str] = {
    "Deployment": "deployments",
    "Service": "services",
    "HorizontalPodAutoscaler": "horizontalpodautoscalers",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "ScaledObject": "scaledobjects",
    "ConfigMap": "configmaps",
    "GRPCRoute": "grpcroutes",
    "HTTPRoute": "httproutes",
    "Pod": "pods",
    "InferenceService": PLURAL,
    "ClusterKopfPeering": "clusterkopfpeerings",  # kopf's peering objects, read for the operator's tie rule
    "KopfPeering": "kopfpeerings",
}
TRANSIENT_STATUSES = frozenset({0, 408, 429, 500, 502, 503, 504})
MERGE_PATCH = "application/merge-patch+json"


class ApiError(Exception):
    """An API call failed; ``status`` is the HTTP status (0 when the server could not be reached)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"HTTP {status} {reason}: {message}" if status else message)
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def transient(self) -> bool:
        return self.status in TRANSIENT_STATUSES

    @property
    def namespace_terminating(self) -> bool:
        """A create refused because the namespace is being deleted (the objects in it go with it)."""
        return self.status == 403 and "because it is being terminated" in self.message

    @property
    def kind_not_served(self) -> bool:
        """The API server serves no such resource type (its CRD, e.g. KEDA's, is not installed).

        An unknown group is answered with a plain "404 page not found", an unknown resource of a known group with
        a Status saying "the server could not find the requested resource"; a missing object names the object.
        """
        return self.status == 404 and ("could not find the requested resource" in self.message
                                       or "404 page not found" in self.message)


def resource_path(api_version: str, kind: str, namespace: str | None, name: str | None = None,
                  subresource: str | None = None) -> str:
    """The REST path of a collection or an object, e.g. /apis/apps/v1/namespaces/ns/deployments/x/status."""
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    path = base + (f"/namespaces/{namespace}" if namespace else "") + f"/{PLURALS[kind]}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path


Transport = Callable[[str, str, Any, Mapping[str, str], Sequence[tuple[str, str]]], tuple[int, str, bytes]]


class Kube:
    """A small, retrying JSON client for the handful of calls the operator makes."""

    def __init__(self, transport: Transport, *, attempts: int = 5, backoff: float = 0.2,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._transport = transport
        self._attempts = attempts
        self._backoff = backoff
        self._sleep = sleep

    @classmethod
    def from_environment(cls, timeout: float = 30.0) -> Kube:
        """In a pod: the service account. Elsewhere: $KUBECONFIG (read now, not at import) or ~/.kube/config."""
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None)
        configuration = client.Configuration.get_default_copy()
        # One connection per handler thread (kopf runs sync handlers in a pool): a smaller pool discards
        # connections under a burst and pays a TLS handshake for each new one.
        configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize or 0, 32)
        api = client.ApiClient(configuration)
        return cls(_kubernetes_transport(api, timeout))

    # -- raw calls -----------------------------------------------------------------------------------------
    def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
                query: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
        """One call, retried on transient failures; raises ``ApiError`` with the server's message otherwise."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        delay = self._backoff
        for attempt in range(1, self._attempts + 1):
            try:
                status, reason, data = self._transport(method, path, body, headers, query)
            except OSError as exc:
                status, reason, data = 0, "Unreachable", str(exc).encode()
            if 200 <= status < 300:
                return json.loads(data) if data else {}
            error = _api_error(status, reason, data)
            if not error.transient or attempt == self._attempts:
                raise error
            log.debug("%s %s: %s; retry %d in %.1fs", method, path, error, attempt, delay)
            self._sleep(delay)
            delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return self.request("GET", resource_path(api_version, kind, namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        return self.request("POST", resource_path(obj["apiVersion"], obj["kind"], meta["namespace"]), dict(obj))

    def patch(self, api_version: str, kind: str, namespace: str, name: str, patch: Mapping[str, Any],
              subresource: str | None = None) -> dict[str, Any]:
        path = resource_path(api_version, kind, namespace, name, subresource)
        return self.request("PATCH", path, dict(patch), MERGE_PATCH)

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        """Delete in the background (dependents too); False when it was already gone."""
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        try:
            self.request("DELETE", resource_path(api_version, kind, namespace, name), body)
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def list(self, api_version: str, kind: str, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        """Objects with all these labels (filtered here too: a selector is a hint some servers ignore)."""
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        found = self.request("GET", resource_path(api_version, kind, namespace), query=[("labelSelector", selector)])
        items = found.get("items") or []
        return [item for item in items
                if all((item.get("metadata", {}).get("labels") or {}).get(k) == v for k, v in labels.items())]

    # -- the operator's verbs ------------------------------------------------------------------------------
    def get_inference_service(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.get(API_VERSION, "InferenceService", namespace, name)

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> dict[str, Any]:
        return self.patch(API_VERSION, "InferenceService", namespace, name, {"status": dict(status)}, "status")

def _api_error(status: int, reason: str, data: bytes) -> ApiError:
    message = data.decode("utf-8", "replace").strip()
    try:
        decoded = json.loads(message)
        if isinstance(decoded, dict) and decoded.get("message"):
            message = str(decoded["message"])
            reason = str(decoded.get("reason") or reason)
    except ValueError:
        pass
    return ApiError(status, reason, message[:500])


def _kubernetes_transport(api: Any, timeout: float) -> Transport:
    """Send requests through the official client's ApiClient, which owns authentication and TLS."""

    def send(method: str, path: str, body: Any, headers: Mapping[str, str],
             query: Sequence[tuple[str, str]]) -> tuple[int, str, bytes]:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        serialized = api.param_serialize(method=method, resource_path=path, query_params=list(query),
                                         header_params=dict(headers), body=body, auth_settings=["BearerToken"])
        verb, url, header_params, payload, _post = serialized
        try:
            response = api.call_api(verb, url, header_params=header_params, body=payload,
                                    _request_timeout=timeout)
        except ApiException as exc:  # raised for TLS and protocol failures; HTTP errors come back as responses
            body = exc.body if isinstance(exc.body, bytes) else str(exc.body or exc.reason or "").encode()
            return int(exc.status or 0), str(exc.reason or ""), body
        except HTTPError as exc:
            raise OSError(f"{method} {path}: {exc}") from exc
        data = response.read()
        return int(response.status), str(response.reason or ""), data or b""

    return send
