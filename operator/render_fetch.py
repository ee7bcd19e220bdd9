"""The fetch init containers: `kubeinfer fetch` of a spec's downloads, each with the environment its stores need.

An http(s) download needs nothing. An s3:// or gs:// download gets each cloud SDK's standard environment, the one
the command reads outside Kubernetes too: AWS_ENDPOINT_URL and AWS_REGION from ``spec.*.storage``,
AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN where the Secret has it) from the Secret named
in ``spec.*.credentials``; STORAGE_EMULATOR_HOST from a gs:// endpoint, and GOOGLE_APPLICATION_CREDENTIALS naming
the Secret's service-account JSON, mounted read-only. Without a Secret the pod's ServiceAccount speaks for it
(IRSA, GKE workload identity). Secrets go into these init containers only, never into the runtime container, and
the operator never reads them: it names them. One container holds one S3 and one GCS setting; downloads whose
stores differ (two endpoints, two Secrets) get a container each: fetch, fetch-2, ...
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kubeinfer.operator.spec import DEFAULT_GCS_KEY, Storage, Uri

FETCH_CONTAINER = "fetch"
FETCH_ROOT = "/kubeinfer/fetched"
NODE_CACHE_ROOT = "/kubeinfer/node-cache"
NODE_CACHE_VOLUME = "node-cache"
GCS_CREDENTIALS_ROOT = "/var/run/secrets/kubeinfer/gcs"
GCS_CREDENTIALS_FILE = "key.json"
SECRET_MODE = 0o440  # owner and group (the pod's fsGroup) read; nobody else
AWS_SECRET_KEYS = (("AWS_ACCESS_KEY_ID", False), ("AWS_SECRET_ACCESS_KEY", False), ("AWS_SESSION_TOKEN", True))


@dataclass(frozen=True)
class NodeCache:
    """A folder on every node (a hostPath) where fetches keep s3:// and gs:// objects for the next pod there, keyed
    by URL, ETag and version; ``max_bytes`` bounds it (least recently used go). The folder must be writable by the
    pods' uid 65532, and the namespace's Pod Security level must allow hostPath volumes."""

    path: str
    max_bytes: int = 20 * 1024**3


@dataclass(frozen=True)
class Download:
    """One `kubeinfer fetch` item (DEST=URL) and the URI it came from."""

    item: str
    uri: Uri


@dataclass
class _Group:
    """The downloads one init container makes: at most one S3 and one GCS setting among them."""

    s3: Storage | None = None
    gs: Storage | None = None
    items: list[str] = field(default_factory=list)

    def takes(self, uri: Uri) -> bool:
        current = {"s3": self.s3, "gs": self.gs}.get(uri.scheme)
        return current is None or current == uri.storage

    def add(self, download: Download) -> None:
        if download.uri.scheme == "s3":
            self.s3 = download.uri.storage or Storage()
        elif download.uri.scheme == "gs":
            self.gs = download.uri.storage or Storage()
        self.items.append(download.item)


def container_name(index: int) -> str:
    return FETCH_CONTAINER if index == 0 else f"{FETCH_CONTAINER}-{index + 1}"


def is_fetch_container(name: str) -> bool:
    """Whether an init container of a runtime pod is one of these (status reports their failures as FetchFailed)."""
    return name == FETCH_CONTAINER or (name.startswith(f"{FETCH_CONTAINER}-") and name[6:].isdigit())


def fetch_containers(downloads: list[Download], image: str, security_context: dict[str, Any],
                     node_cache: NodeCache | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(init containers, the volumes only they mount: Secrets, the node cache) for the downloads, in order."""
    groups: list[_Group] = []
    for download in downloads:
        group = next((g for g in groups if g.takes(download.uri)), None)
        if group is None:
            group = _Group()
            groups.append(group)
        group.add(download)
    containers: list[dict[str, Any]] = []
    volumes: list[dict[str, Any]] = []
    for index, group in enumerate(groups):
        env: list[dict[str, Any]] = [{"name": "HOME", "value": "/tmp"}]
        mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"},
                                        {"name": "fetched", "mountPath": FETCH_ROOT}]
        if group.s3 is not None:
            env += _s3_env(group.s3)
        if group.gs is not None:
            env += _gs_env(group.gs)
            if group.gs.secret_name:
                volume = f"gcs-credentials-{index + 1}"
                volumes.append({"name": volume, "secret": {
                    "secretName": group.gs.secret_name, "defaultMode": SECRET_MODE,
                    "items": [{"key": group.gs.secret_key or DEFAULT_GCS_KEY, "path": GCS_CREDENTIALS_FILE}]}})
                mount = f"{GCS_CREDENTIALS_ROOT}-{index + 1}"
                mounts.append({"name": volume, "mountPath": mount, "readOnly": True})
                env.append({"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": f"{mount}/{GCS_CREDENTIALS_FILE}"})
        cache_args: list[str] = []
        if node_cache is not None and (group.s3 is not None or group.gs is not None):
            if not any(v["name"] == NODE_CACHE_VOLUME for v in volumes):
                volumes.append({"name": NODE_CACHE_VOLUME,
                                "hostPath": {"path": node_cache.path, "type": "DirectoryOrCreate"}})
            mounts.append({"name": NODE_CACHE_VOLUME, "mountPath": NODE_CACHE_ROOT})
            cache_args = ["--cache", NODE_CACHE_ROOT, "--cache-max-bytes", str(node_cache.max_bytes)]
        containers.append({
            "name": container_name(index),
            "image": image,
            "imagePullPolicy": "IfNotPresent",
            "command": ["kubeinfer", "fetch"],
            "args": ["--into", FETCH_ROOT, *cache_args, *group.items],
            "env": env,
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
            "securityContext": dict(security_context),
            # The fetch's last line (its one-line error) becomes the termination message: status shows it.
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "volumeMounts": mounts,
        })
    return containers, volumes


def _s3_env(storage: Storage) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = []
    if storage.endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": storage.endpoint})
    if storage.region:
        env.append({"name": "AWS_REGION", "value": storage.region})
    if storage.secret_name:
        for key, optional in AWS_SECRET_KEYS:
            reference: dict[str, Any] = {"name": storage.secret_name, "key": key}
            if optional:
                reference["optional"] = True
            env.append({"name": key, "valueFrom": {"secretKeyRef": reference}})
    return env


def _gs_env(storage: Storage) -> list[dict[str, Any]]:
    return [{"name": "STORAGE_EMULATOR_HOST", "value": storage.endpoint}] if storage.endpoint else []
