"""Pure rendering of an InferenceService under ``spec.rollout``: one Deployment per revision, the Services' split,
and the traffic table every replica reads. No I/O.

- The stable revision's Deployment (``NAME`` for the first revision, ``NAME-REVISION`` after a promotion) is
  rendered from the spec that made it (``status.rollout.stableSpec``), with the current replica count; a new
  revision's Deployment ``NAME-REVISION`` from the current spec, with its step's share of the replicas.
- Pods carry ``kubeinfer.io/revision``. The ClusterIP Service ``NAME`` and the headless ``NAME-pods`` select the
  stable revision only, except during weight steps (then both, and kube-proxy splits by ready pods); a headless
  ``NAME-REVISION`` per revision is what balancing clients and the shadow mirror call.
- ConfigMap ``NAME-traffic`` holds the traffic table (traffic.json), mounted in every revision's pods, read by the
  runtime (``--traffic-file``; it mirrors the shadow share, and GetModelInfo hands the table to balancing clients).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from kubeinfer.operator.render import (
    GRPC_PORT,
    REVISION_LABEL,
    RUNTIME_CONTAINER,
    ChildRef,
    Children,
    Owner,
    RuntimeDefaults,
    _metadata,
    _service_ports,
    child_refs,
    render_children,
    render_deployment,
    selector_labels,
)
from kubeinfer.operator.render_routes import render_routes, route_refs
from kubeinfer.operator.rollout import RolloutState, Traffic, candidate_share
from kubeinfer.operator.spec import ServiceSpec, parse_spec

TRAFFIC_ROOT = "/etc/kubeinfer/traffic"
TRAFFIC_FILE = f"{TRAFFIC_ROOT}/traffic.json"
TRAFFIC_KEY = "traffic.json"
DEFAULT_CLUSTER_DOMAIN = "cluster.local"


def traffic_name(name: str) -> str:
    return f"{name}-traffic"


def revision_service_name(name: str, revision: str) -> str:
    return f"{name}-{revision}"


def revision_of(owner: Owner, spec: ServiceSpec, defaults: RuntimeDefaults) -> str:
    """The revision of a spec: a hash of the runtime pod template it renders (the model, its settings, the image,
    resources...), so any change that needs new pods is a new revision and nothing else is."""
    template = render_deployment(owner, spec, defaults)["spec"]["template"]
    digest = hashlib.sha256(json.dumps(template, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return digest[:10]


def with_revision(deployment: dict[str, Any], owner: Owner, revision: str, name: str,
                  replicas: int | None) -> dict[str, Any]:
    """A rendered Deployment made a revision's: its name, the revision label on its pods (and in its selector,
    except the first Deployment ``NAME``, whose selector is immutable), and the traffic table mounted."""
    rendered = copy.deepcopy(deployment)
    rendered["metadata"]["name"] = name
    spec = rendered["spec"]
    if name != owner.name:
        spec["selector"]["matchLabels"][REVISION_LABEL] = revision
    if replicas is None:
        spec.pop("replicas", None)
    else:
        spec["replicas"] = replicas
    template = spec["template"]
    template["metadata"]["labels"][REVISION_LABEL] = revision
    pod = template["spec"]
    pod["volumes"].append({"name": "traffic", "configMap": {"name": traffic_name(owner.name), "optional": True,
                                                            "defaultMode": 420}})
    container = next(c for c in pod["containers"] if c["name"] == RUNTIME_CONTAINER)
    container["volumeMounts"].append({"name": "traffic", "mountPath": TRAFFIC_ROOT, "readOnly": True})
    container["env"].append({"name": "KUBEINFER_REVISION", "valueFrom": {"fieldRef": {
        "apiVersion": "v1", "fieldPath": f"metadata.labels['{REVISION_LABEL}']"}}})
    container["args"] += ["--traffic-file", TRAFFIC_FILE]
    return rendered


def _service(owner: Owner, name: str, selector: Mapping[str, str], headless: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {"selector": dict(selector), "ports": _service_ports()}
    if headless:
        spec["clusterIP"] = "None"
    else:
        spec["type"] = "ClusterIP"
    return {"apiVersion": "v1", "kind": "Service", "metadata": _metadata(owner, name), "spec": spec}


def _target(owner: Owner, revision: str, cluster_domain: str) -> str:
    return f"{revision_service_name(owner.name, revision)}.{owner.namespace}.svc.{cluster_domain}:{GRPC_PORT}"


def traffic_table(owner: Owner, state: RolloutState, traffic: Traffic, cluster_domain: str) -> dict[str, Any]:
    """The table the runtimes read (see runtime/traffic.py and kubeinfer.v1.Traffic)."""
    table: dict[str, Any] = {
        "generation": state.generation,
        "stable": {"revision": state.stable_revision, "target": _target(owner, state.stable_revision, cluster_domain)},
        "candidate": None, "candidateWeight": 0, "shadowPercent": 0}
    if state.candidate_revision is not None:
        table["candidate"] = {"revision": state.candidate_revision,
                              "target": _target(owner, state.candidate_revision, cluster_domain)}
        table["candidateWeight"], table["shadowPercent"] = traffic.weight, traffic.shadow
    return table


def render_traffic_config_map(owner: Owner, table: Mapping[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _metadata(owner, traffic_name(owner.name)),
            "data": {TRAFFIC_KEY: json.dumps(table, sort_keys=True)}}


def render_rollout_children(owner: Owner, spec: ServiceSpec, defaults: RuntimeDefaults, state: RolloutState,
                            revision: str, cluster_domain: str = DEFAULT_CLUSTER_DOMAIN,
                            stable_replicas: int | None = None) -> Children:
    """Every child of an InferenceService with ``spec.rollout``, for the rollout's ``state``.

    ``stable_replicas``: the stable Deployment's live replica count where an autoscaler sets it (the candidate's
    share is of that); otherwise the spec's.
    """
    assert spec.rollout is not None
    plain = render_children(owner, spec, defaults)  # the HPA, PDB, ScaledObject as without a rollout
    traffic = Traffic.of(state, spec.rollout)
    stable_spec = parse_spec(state.stable_spec) if state.stable_spec else spec
    replicas = None if spec.autoscaling is not None else spec.replicas
    stable = with_revision(render_deployment(owner, stable_spec, defaults), owner, state.stable_revision,
                           state.stable_deployment, replicas)
    present: list[dict[str, Any]] = [stable]
    revisions = [state.stable_revision]
    if state.candidate_revision is not None and state.candidate_deployment is not None:
        percent = traffic.weight or traffic.shadow
        base = replicas if replicas is not None else max(stable_replicas or spec.min_replicas, 1)
        present.append(with_revision(render_deployment(owner, spec, defaults), owner, state.candidate_revision,
                                     state.candidate_deployment, candidate_share(base, percent) if percent else 1))
        revisions.append(state.candidate_revision)
    shared = dict(selector_labels(owner.name))
    if not traffic.live_candidate:
        shared[REVISION_LABEL] = state.stable_revision
    present.append(_service(owner, owner.name, shared, headless=False))
    present.append(_service(owner, f"{owner.name}-pods", shared, headless=True))
    for rev in revisions:
        present.append(_service(owner, revision_service_name(owner.name, rev),
                                {**selector_labels(owner.name), REVISION_LABEL: rev}, headless=True))
    present.append(render_traffic_config_map(owner, traffic_table(owner, state, traffic, cluster_domain)))
    for child in plain.present:
        if child["kind"] == "HorizontalPodAutoscaler" or child["kind"] == "ScaledObject":
            child["spec"]["scaleTargetRef"]["name"] = state.stable_deployment
            present.append(child)
        elif child["kind"] == "PodDisruptionBudget":
            present.append(child)
    if spec.rollout.gateway is not None:
        present += render_routes(owner, spec.rollout.gateway.parent_refs, state.stable_revision,
                                 state.candidate_revision, traffic.weight)
    wanted = {(obj["kind"], obj["metadata"]["name"]) for obj in present}
    # The previous stable revision keeps serving, untouched, until every replica has the table that sends
    # nothing to it (clients that still hold the old one keep reaching it meanwhile).
    kept = frozenset({("Deployment", state.retiring)} if state.retiring is not None else ())
    refs = [*child_refs(owner.name), ChildRef("v1", "ConfigMap", traffic_name(owner.name)), *route_refs(owner.name)]
    absent = [ref for ref in refs if (ref.kind, ref.name) not in wanted | kept]
    return Children(present=present, absent=absent, kept=kept)
