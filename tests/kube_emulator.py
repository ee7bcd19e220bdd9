"""A Kubernetes API for tests: kmock 0.8's KubernetesEmulator with the gaps that matter to an operator filled.

kmock serves the HTTP side (aiohttp on 127.0.0.1, request parsing, discovery, error bodies). This subclass
keeps the objects itself so that they behave like the API server's:

- metadata: uid, resourceVersion (one cluster-wide counter), creationTimestamp, generation (bumped when
  anything but metadata and status changes), generateName, apiVersion/kind on every object;
- writes: create (409 when it exists, 404 when the namespace does not), JSON merge patch, JSON patch (a failed
  ``test`` is 422), strategic merge patch approximated as a merge patch, PUT with resourceVersion conflicts,
  ``/status`` isolation for resources that have that subresource, finalizers and deletionTimestamp;
- reads: lists with kind and resourceVersion, label selectors (=, ==, !=, exists, !exists) and the
  metadata.name/metadata.namespace field selectors, watches that resume from ``?resourceVersion`` without
  losing events and end after ``timeoutSeconds``;
- the garbage collector: deleting an owner deletes its dependents (owner references by uid);
- discovery: core groupVersion "v1" (kmock says "/v1"), GET /api/v1/namespaces and /api/v1/namespaces/NAME
  (kmock's path parser fails there), and CRDs created through the API become served resources.

Still not emulated: controllers (no ReplicaSets or Pods appear: a test sets a Deployment's status the way its
controller would), server-side apply, strategic-merge list semantics, schema validation and defaulting, RBAC.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import datetime
import itertools
import json
import re
import secrets
import threading
import uuid
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import aiohttp.web
import jsonpatch
import kmock
from kmock._internal import apps, enums, parsing, rendering
from kmock._internal.dicts import merge_patch_dict

Key = tuple[kmock.resource, str | None, str]


class KubeEmulator(kmock.KubernetesEmulator):
    """The emulator; serve it with ``kmock.Server(emulator)`` inside ``async with emulator``."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        with warnings.catch_warnings():  # kmock 0.8 uses the deprecated importlib.resources.read_binary
            warnings.simplefilter("ignore", DeprecationWarning)
            self.resources.load_bundled()
        # A real server stores one object under every version of a resource; this one would keep separate
        # objects per version, and kmock may advertise any of them as preferred. Serve the newest only.
        newest: dict[tuple[str | None, str | None], kmock.resource] = {}
        for resource in list(self.resources):
            key = (resource.group, resource.plural)
            if key not in newest or _version_rank(resource.version) > _version_rank(newest[key].version):
                newest[key] = resource
        for resource in list(self.resources):
            if newest[(resource.group, resource.plural)] != resource:
                del self.resources[resource]
        self._store: dict[Key, dict[str, Any]] = {}
        self._log: list[tuple[int, kmock.resource, dict[str, Any]]] = []  # (resourceVersion, resource, event)
        self._counter = itertools.count(1000)
        self._rv = next(self._counter)
        self._changed: asyncio.Condition | None = None
        self.audit: collections.deque[tuple[str, str, str, str]] = collections.deque(maxlen=200_000)
        for name in ("default", "kube-system"):
            self._put(kmock.resource("", "v1", "namespaces"), None, self._stamp({
                "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}, None), "ADDED")

    # -- request entry: fix the paths kmock cannot parse ---------------------------------------------------
    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        match = re.fullmatch(r"/api/v1/namespaces(?:/([^/]+))?(?:/(status|finalize))?/?", raw_request.path)
        if match is None:
            return await super().__call__(raw_request)
        body = await raw_request.read()
        if "protobuf" in raw_request.headers.get("Content-Type", "") and body:
            return await self._render_error(_unsupported_protobuf())
        text = body.decode("utf-8", "replace")
        name = match.group(1)
        path = parsing.ParsedPath(group="", version="v1", plural="namespaces", name=name,
                                  subresource=match.group(2))
        request = rendering.Request(
            id=len(self._requests), raw_request=raw_request, url=raw_request.url, method=raw_request.method,
            params=dict(raw_request.query), headers=dict(raw_request.headers), cookies=dict(raw_request.cookies),
            body=body, text=text, data=json.loads(text) if text.strip() else None,
            action=parsing.guess_k8s(path, enums.method(raw_request.method), dict(raw_request.query)),
            resource=kmock.resource("", "v1", "namespaces"), namespace=None, name=name, subresource=match.group(2))
        self._requests.append(request)
        try:
            return await self._handle(request)
        except Exception as exc:
            return await self._render_error(exc)

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        del self._requests[:-1]  # kmock re-scans its request log on every request: keep it short
        if self._changed is None:
            self._changed = asyncio.Condition()
        resource = request.resource
        if resource is None or resource.plural is None:
            return await apps.RawHandler._handle(self, request)  # discovery and anything non-Kubernetes
        if resource not in self.resources:
            raise kmock.KubernetesResourceNotFoundError()
        if "protobuf" in request.headers.get("Content-Type", "") and request.body:
            raise _unsupported_protobuf()
        method = request.method.value if hasattr(request.method, "value") else str(request.method)
        self._audit(request, method)
        if request.action == enums.action.WATCH:
            return await self._watch(request)
        if request.action == enums.action.LIST:
            return aiohttp.web.json_response(self._list(request))
        if request.action == enums.action.FETCH:
            return aiohttp.web.json_response(self._get(request))
        if request.action == enums.action.CREATE:
            created = self._create(request)
            await self._notify()
            return aiohttp.web.json_response(created, status=201)
        if request.action == enums.action.UPDATE or method == "PUT":
            updated = self._update(request, replace=method == "PUT")
            await self._notify()
            return aiohttp.web.json_response(updated)
        if request.action == enums.action.DELETE:
            deleted = self._delete(request)
            await self._notify()
            return aiohttp.web.json_response(deleted)
        raise kmock.KubernetesError(405, "MethodNotAllowed", f"{method} is not supported on {request.url.path}")

    def _audit(self, request: rendering.Request, method: str) -> None:
        """Record who did what, as RBAC would see it: (user agent, verb, group, resource[/subresource])."""
        assert request.resource is not None
        verb = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}.get(method, "get")
        if request.action == enums.action.WATCH:
            verb = "watch"
        elif request.action == enums.action.LIST:
            verb = "list"
        plural = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
        agent = request.headers.get("User-Agent", "")
        self.audit.append((agent, verb, request.resource.group or "", plural))

    async def _notify(self) -> None:
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()

    # -- discovery fixes -----------------------------------------------------------------------------------
    async def _serve_version(self, request: rendering.Request) -> rendering.Payload:
        payload = await super()._serve_version(request)
        if isinstance(payload, dict):
            if payload.get("groupVersion", "").startswith("/"):
                payload["groupVersion"] = payload["groupVersion"][1:]
            for entry in payload.get("resources") or []:
                if "/" in entry["name"]:  # subresources have no short names or categories of their own
                    entry.update(shortNames=[], categories=[], verbs=["get", "patch", "update"])
        return payload

    # -- helpers -------------------------------------------------------------------------------------------
    def _info(self, resource: kmock.resource) -> kmock.ResourceInfo:
        return self.resources[resource]

    def _kind(self, resource: kmock.resource) -> str:
        return self._info(resource).kind or resource.plural.capitalize()

    def _api_version(self, resource: kmock.resource) -> str:
        return f"{resource.group}/{resource.version}" if resource.group else resource.version

    def _next_rv(self) -> str:
        self._rv = next(self._counter)
        return str(self._rv)

    def _stamp(self, obj: dict[str, Any], namespace: str | None) -> dict[str, Any]:
        meta = obj.setdefault("metadata", {})
        if namespace is not None:
            meta["namespace"] = namespace
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        meta["generation"] = 1
        meta["resourceVersion"] = self._next_rv()
        return obj

    def _put(self, resource: kmock.resource, namespace: str | None, obj: dict[str, Any], event: str) -> None:
        self._store[(resource, namespace, obj["metadata"]["name"])] = obj
        self._log.append((int(obj["metadata"]["resourceVersion"]), resource,
                          {"type": event, "object": copy.deepcopy(obj)}))

    def _key(self, request: rendering.Request, name: str | None = None) -> Key:
        assert request.resource is not None
        namespaced = self._info(request.resource).namespaced is not False
        namespace = request.namespace if namespaced else None
        if namespaced and not namespace:
            raise kmock.KubernetesError(400, "BadRequest", "a namespace is required for a namespaced resource")
        return request.resource, namespace, name or request.name or ""

    def _existing(self, request: rendering.Request) -> dict[str, Any]:
        obj = self._store.get(self._key(request))
        if obj is None:
            assert request.resource is not None
            raise kmock.KubernetesError(404, "NotFound", f'{request.resource.plural} "{request.name}" not found')
        return obj

    # -- reads ---------------------------------------------------------------------------------------------
    def _selected(self, request: rendering.Request) -> Iterator[dict[str, Any]]:
        labels = _parse_selector(request.params.get("labelSelector", ""))
        fields = _parse_fields(request.params.get("fieldSelector", ""))
        for (resource, namespace, _name), obj in sorted(self._store.items(), key=lambda kv: (kv[0][1] or "", kv[0][2])):
            if resource == request.resource and (request.namespace is None or namespace == request.namespace) \
                    and _matches(obj, labels, fields):
                yield obj

    def _list(self, request: rendering.Request) -> dict[str, Any]:
        assert request.resource is not None
        return {"apiVersion": self._api_version(request.resource), "kind": self._kind(request.resource) + "List",
                "metadata": {"resourceVersion": str(self._rv)},
                "items": [copy.deepcopy(obj) for obj in self._selected(request)]}

    def _get(self, request: rendering.Request) -> dict[str, Any]:
        obj = copy.deepcopy(self._existing(request))
        if request.subresource == "scale":
            return _scale_of(obj)
        return obj

    async def _watch(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        """Stream events after ``resourceVersion`` (or the current objects as ADDED when none is given)."""
        assert request.resource is not None and self._changed is not None
        raw = request._raw_request
        assert raw is not None
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(raw)
        labels = _parse_selector(request.params.get("labelSelector", ""))
        fields = _parse_fields(request.params.get("fieldSelector", ""))
        if request.name:
            fields["metadata.name"] = request.name
        since = request.params.get("resourceVersion", "")
        position = len(self._log)
        pending: list[dict[str, Any]] = []
        if since in ("", "0"):
            pending = [{"type": "ADDED", "object": copy.deepcopy(obj)} for obj in self._selected(request)
                       if _matches(obj, labels, fields)]
        else:
            oldest = self._log[0][0] if self._log else self._rv
            if int(since) < oldest - 1:
                pending = [{"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                                        "code": 410, "reason": "Expired",
                                                        "message": f"too old resource version: {since}"}}]
            position = next((i for i, (rv, _, _) in enumerate(self._log) if rv > int(since)), len(self._log))
        timeout = float(request.params.get("timeoutSeconds") or 0) or None
        deadline = asyncio.get_running_loop().time() + timeout if timeout else None
        try:
            while True:
                for event in pending:
                    await response.write(json.dumps(event).encode() + b"\n")
                    if event["type"] == "ERROR":
                        return response
                pending = []
                for _rv, resource, event in self._log[position:]:
                    obj = event["object"]
                    if resource == request.resource and _matches(obj, labels, fields) and (
                            request.namespace is None or obj["metadata"].get("namespace") == request.namespace):
                        pending.append(event)
                position = len(self._log)
                if pending:
                    continue
                remaining = None if deadline is None else deadline - asyncio.get_running_loop().time()
                if remaining is not None and remaining <= 0:
                    break
                async with self._changed:
                    if len(self._log) == position:  # re-checked under the lock: no lost wake-up
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._changed.wait(), timeout=remaining)
        except (ConnectionResetError, asyncio.CancelledError):
            return response
        await response.write_eof()
        return response

    # -- writes --------------------------------------------------------------------------------------------
    def _create(self, request: rendering.Request) -> dict[str, Any]:
        assert request.resource is not None
        if not isinstance(request.data, Mapping):
            raise kmock.KubernetesError(400, "BadRequest", "the body must be a JSON object")
        obj = copy.deepcopy(dict(request.data))
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        if not meta.get("name"):
            raise kmock.KubernetesError(422, "Invalid", "metadata.name or metadata.generateName is required")
        key = self._key(request, meta["name"])
        if key[1] is not None and (kmock.resource("", "v1", "namespaces"), None, key[1]) not in self._store:
            raise kmock.KubernetesError(404, "NotFound", f'namespaces "{key[1]}" not found')
        if key in self._store:
            raise kmock.KubernetesError(409, "AlreadyExists",
                                        f'{request.resource.plural} "{meta["name"]}" already exists')
        obj["apiVersion"], obj["kind"] = self._api_version(request.resource), self._kind(request.resource)
        for stale in ("uid", "resourceVersion", "deletionTimestamp", "generation", "creationTimestamp"):
            meta.pop(stale, None)
        if "status" in self._info(request.resource).subresources:
            obj.pop("status", None)  # as in the API server: status is written through /status only
        self._stamp(obj, key[1])
        self._put(request.resource, key[1], obj, "ADDED")
        if request.resource == kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions"):
            self._serve_crd(obj)
        created = copy.deepcopy(obj)
        self._collect_if_orphaned(key)
        return created

    def _update(self, request: rendering.Request, replace: bool) -> dict[str, Any]:
        assert request.resource is not None
        old = self._existing(request)
        content_type = (request._raw_request.headers.get("Content-Type", "") if request._raw_request else "")
        if replace:
            new = copy.deepcopy(dict(request.data or {}))
            sent = (new.get("metadata") or {}).get("resourceVersion")
            if sent and sent != old["metadata"]["resourceVersion"]:
                raise kmock.KubernetesError(409, "Conflict", "the object has been modified; please apply your "
                                                             "changes to the latest version and try again")
        else:
            new = _apply_patch(old, request.data, content_type)
        if request.subresource == "scale":  # kubectl scale: only spec.replicas moves
            replicas = (new.get("spec") or {}).get("replicas")
            new = copy.deepcopy(old)
            new.setdefault("spec", {})["replicas"] = replicas
        elif "status" in self._info(request.resource).subresources:
            if request.subresource == "status":
                new = {**copy.deepcopy(old), "status": new.get("status")}
            else:
                new["status"] = copy.deepcopy(old.get("status"))
            if new.get("status") is None:
                new.pop("status", None)
        meta = new.setdefault("metadata", {})
        for fixed in ("name", "namespace", "uid", "creationTimestamp", "generation"):
            if fixed in old["metadata"]:
                meta[fixed] = old["metadata"][fixed]
        meta["deletionTimestamp"] = old["metadata"].get("deletionTimestamp") or meta.get("deletionTimestamp")
        if not meta["deletionTimestamp"]:
            meta.pop("deletionTimestamp")
        new["apiVersion"], new["kind"] = old["apiVersion"], old["kind"]
        if _without(new, "metadata", "status") != _without(old, "metadata", "status"):
            meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
        if new == old:  # a no-op write changes nothing, not even the resourceVersion
            return _scale_of(old) if request.subresource == "scale" else copy.deepcopy(old)
        meta["resourceVersion"] = self._next_rv()
        key = self._key(request)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._remove(key, new, cascade=True)
        else:
            self._put(key[0], key[1], new, "MODIFIED")
            if new["metadata"].get("ownerReferences") != old["metadata"].get("ownerReferences"):
                self._collect_if_orphaned(key)
        return _scale_of(new) if request.subresource == "scale" else copy.deepcopy(new)

    def _delete(self, request: rendering.Request) -> dict[str, Any]:
        obj = self._existing(request)
        key = self._key(request)
        options = request.data if isinstance(request.data, Mapping) else {}
        policy = options.get("propagationPolicy") or request.params.get("propagationPolicy") or "Background"
        if obj["metadata"].get("finalizers"):
            if not obj["metadata"].get("deletionTimestamp"):
                obj = copy.deepcopy(obj)
                obj["metadata"]["deletionTimestamp"] = _now()
                obj["metadata"]["resourceVersion"] = self._next_rv()
                self._put(key[0], key[1], obj, "MODIFIED")
            return copy.deepcopy(obj)
        self._remove(key, copy.deepcopy(obj), cascade=policy != "Orphan")
        return copy.deepcopy(obj)

    def _remove(self, key: Key, last: dict[str, Any], cascade: bool) -> None:
        """Delete an object for good, then collect its dependents like the garbage collector does."""
        self._store.pop(key, None)
        last["metadata"]["resourceVersion"] = self._next_rv()
        self._log.append((int(last["metadata"]["resourceVersion"]), key[0], {"type": "DELETED", "object": last}))
        if key[0] == kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions"):
            self._unserve_crd(last)
        uid = last["metadata"].get("uid")
        for other_key, other in list(self._store.items()):
            refs = (other.get("metadata") or {}).get("ownerReferences") or []
            if not uid or not any(ref.get("uid") == uid for ref in refs):
                continue
            updated = copy.deepcopy(other)
            updated["metadata"]["ownerReferences"] = [ref for ref in refs if ref.get("uid") != uid]
            if not cascade or updated["metadata"]["ownerReferences"]:
                if not updated["metadata"]["ownerReferences"]:
                    del updated["metadata"]["ownerReferences"]
                updated["metadata"]["resourceVersion"] = self._next_rv()
                self._put(other_key[0], other_key[1], updated, "MODIFIED")
            elif updated["metadata"].get("finalizers"):
                updated["metadata"]["deletionTimestamp"] = _now()
                updated["metadata"]["resourceVersion"] = self._next_rv()
                self._put(other_key[0], other_key[1], updated, "MODIFIED")
            else:
                self._remove(other_key, updated, cascade=True)

    def _collect_if_orphaned(self, key: Key) -> None:
        """The garbage collector deletes a dependent whose owners are all gone, even one created after them."""
        obj = self._store.get(key)
        refs = ((obj or {}).get("metadata") or {}).get("ownerReferences") or []
        if not refs:
            return
        alive = {(o.get("metadata") or {}).get("uid") for o in self._store.values()}
        if not any(ref.get("uid") in alive for ref in refs):
            assert obj is not None
            self._remove(key, copy.deepcopy(obj), cascade=True)

    # -- CRDs become resources -----------------------------------------------------------------------------
    def _serve_crd(self, crd: Mapping[str, Any]) -> None:
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        for version in spec.get("versions") or []:
            if not version.get("served", True):
                continue
            self.resources[kmock.resource(spec["group"], version["name"], names["plural"])] = kmock.ResourceInfo(
                kind=names.get("kind"), singular=names.get("singular"), namespaced=spec.get("scope") == "Namespaced",
                shortnames=set(names.get("shortNames") or []), categories=set(names.get("categories") or []),
                verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
                subresources=set((version.get("subresources") or {}).keys()))

    def _unserve_crd(self, crd: Mapping[str, Any]) -> None:
        spec = crd.get("spec") or {}
        for version in spec.get("versions") or []:
            resource = kmock.resource(spec["group"], version["name"], (spec.get("names") or {})["plural"])
            if resource in self.resources:
                del self.resources[resource]
            for key in [k for k in self._store if k[0] == resource]:
                self._remove(key, copy.deepcopy(self._store[key]), cascade=True)

    # -- direct access for tests (call on the emulator's loop) ---------------------------------------------
    def snapshot(self, api_version: str, plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        group, _, version = api_version.rpartition("/")
        obj = self._store.get((kmock.resource(group, version, plural), namespace, name))
        return copy.deepcopy(obj) if obj is not None else None


def _version_rank(version: str | None) -> tuple[int, int, int]:
    """Kubernetes version order: v2 > v1 > v1beta2 > v1beta1 > v1alpha1."""
    match = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", version or "")
    if match is None:
        return (-1, 0, 0)
    stability = {"alpha": 0, "beta": 1, None: 2}[match.group(2)]
    return (int(match.group(1)), stability, int(match.group(3) or 0))


def _unsupported_protobuf() -> kmock.KubernetesError:
    return kmock.KubernetesError(415, "UnsupportedMediaType", "protobuf bodies are not emulated; send JSON")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _without(obj: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in keys}


def _strip_directives(patch: Any) -> Any:
    """Drop strategic-merge-patch directives ($patch, $setElementOrder/...) before merging."""
    if isinstance(patch, Mapping):
        return {k: _strip_directives(v) for k, v in patch.items() if not str(k).startswith("$")}
    if isinstance(patch, list):
        return [_strip_directives(v) for v in patch]
    return patch


def _apply_patch(old: Mapping[str, Any], patch: Any, content_type: str) -> dict[str, Any]:
    if "apply-patch" in content_type:
        raise kmock.KubernetesError(415, "UnsupportedMediaType", "server-side apply is not emulated")
    try:
        if "json-patch" in content_type or isinstance(patch, list):
            return jsonpatch.apply_patch(copy.deepcopy(dict(old)), patch)
        if not isinstance(patch, Mapping):
            raise kmock.KubernetesError(400, "BadRequest", "a merge patch must be a JSON object")
        if "strategic-merge-patch" in content_type:
            patch = _strip_directives(patch)
        return copy.deepcopy(dict(merge_patch_dict(old, patch)))
    except jsonpatch.JsonPatchTestFailed as exc:
        raise kmock.KubernetesError(422, "Invalid", f"the server rejected our request due to an error in our "
                                                    f"request: {exc}") from None
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, ValueError) as exc:
        raise kmock.KubernetesError(422, "Invalid", str(exc)) from None


def _scale_of(obj: Mapping[str, Any]) -> dict[str, Any]:
    meta = obj["metadata"]
    return {"apiVersion": "autoscaling/v1", "kind": "Scale",
            "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion") if k in meta},
            "spec": {"replicas": (obj.get("spec") or {}).get("replicas", 0)},
            "status": {"replicas": (obj.get("status") or {}).get("replicas", 0),
                       "selector": (obj.get("status") or {}).get("selector", "")}}


def _parse_selector(text: str) -> list[tuple[str, str, str | None]]:
    """Equality-based label selectors: a=b, a==b, a!=b, a, !a."""
    rules: list[tuple[str, str, str | None]] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "!=" in part:
            key, value = part.split("!=", 1)
            rules.append(("!=", key.strip(), value.strip()))
        elif "=" in part:
            key, value = re.split("==?", part, maxsplit=1)
            rules.append(("=", key.strip(), value.strip()))
        elif part.startswith("!"):
            rules.append(("!exists", part[1:].strip(), None))
        else:
            rules.append(("exists", part, None))
    return rules


def _parse_fields(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.partition("=")
        fields[key.strip()] = value.lstrip("=").strip()
    return fields


def _matches(obj: Mapping[str, Any], rules: list[tuple[str, str, str | None]], fields: Mapping[str, str]) -> bool:
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    for op, key, value in rules:
        if (op == "=" and labels.get(key) != value) or (op == "!=" and labels.get(key) == value) \
                or (op == "exists" and key not in labels) or (op == "!exists" and key in labels):
            return False
    for key, value in fields.items():
        field = key.removeprefix("metadata.")
        if field in ("name", "namespace") and (meta.get(field) or "") != value:
            return False
    return True


class EmulatedCluster:
    """The emulator on its own event loop in a background thread, reachable at ``url`` by any client."""

    def __init__(self) -> None:
        self.emulator: KubeEmulator | None = None
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="kube-emulator", daemon=True)
        self._error: BaseException | None = None

    def start(self) -> EmulatedCluster:
        self._thread.start()
        if not self._started.wait(30) or self._error is not None:
            raise RuntimeError(f"the Kubernetes emulator did not start: {self._error!r}")
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:
            self._error = exc
            self._started.set()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        self.emulator = KubeEmulator()
        async with self.emulator, kmock.Server(self.emulator) as server:
            self.url = f"http://{server.host}:{server.port}"
            self._started.set()
            await self._stop.wait()

    def call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(emulator, *args)`` on the emulator's loop (its state is not thread-safe)."""

        async def invoke() -> Any:
            return fn(self.emulator, *args)

        return asyncio.run_coroutine_threadsafe(invoke(), self._loop).result(10)

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
