"""Pure rendering of the Gateway API routes of a rollout (``spec.rollout.gateway``): a GRPCRoute NAME and an
HTTPRoute NAME that split a gateway's traffic between the stable revision's Service ``NAME-STABLE`` and the
candidate's ``NAME-CANDIDATE`` by the step's weight, so callers that reach the model through a Gateway (not
through kubeinfer.clients or the ClusterIP Service) follow the rollout too. No I/O, no clock.

Both use ``gateway.networking.k8s.io/v1``, the version the Gateway API's standard channel serves for both kinds
(v1.6; tests/test_routes_cluster.py checks them against those CRDs, from scripts/gateway-crds.sh). ``parentRefs``
are the user's, passed through unchanged: which Gateway (and listener) attaches the routes is theirs to say.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from kubeinfer.operator.render import GRPC_PORT, HTTP_PORT, ChildRef, Owner, _metadata

GATEWAY_API_VERSION = "gateway.networking.k8s.io/v1"
ROUTE_KINDS: tuple[tuple[str, int], ...] = (("GRPCRoute", GRPC_PORT), ("HTTPRoute", HTTP_PORT))


def revision_service(name: str, revision: str) -> str:
    """The per-revision headless Service ``NAME-REV`` (rollout design: selector labels + the revision label)."""
    return f"{name}-{revision}"


def route_refs(name: str) -> list[ChildRef]:
    """Both routes of InferenceService ``name``: what to delete when its spec drops ``rollout.gateway``."""
    return [ChildRef(GATEWAY_API_VERSION, kind, name) for kind, _ in ROUTE_KINDS]


def _backend_refs(name: str, port: int, stable: str, candidate: str | None, weight: int) -> list[dict[str, Any]]:
    """``group`` and ``kind`` are sent although they are the CRD's defaults, so a route read back holds exactly
    what was rendered and the operator's next pass sends no patch."""
    def ref(revision: str, share: int) -> dict[str, Any]:
        return {"group": "", "kind": "Service", "name": revision_service(name, revision), "port": port,
                "weight": share}

    if candidate is None:
        return [ref(stable, 100)]
    return [ref(stable, 100 - weight), ref(candidate, weight)]


def render_routes(owner: Owner, parent_refs: Sequence[Mapping[str, Any]], stable: str, candidate: str | None,
                  weight: int) -> list[dict[str, Any]]:
    """GRPCRoute and HTTPRoute ``owner.name``: one rule whose backends are the stable revision's Service at
    ``100 - weight`` and the candidate's at ``weight`` (only the stable one, at 100, without a candidate).

    ``stable`` and ``candidate`` are revisions (the 10 hex chars), not Service names. A candidate at weight 0 (a
    shadow step) is still listed, at 0: the route then already names it, and only its weight changes later.
    """
    if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
        raise ValueError(f"weight must be an integer percent 0..100, got {weight!r}")
    if candidate is None and weight != 0:
        raise ValueError(f"weight {weight} without a candidate revision")
    if not parent_refs:
        raise ValueError("a route needs at least one parentRef (spec.rollout.gateway.parentRefs)")
    routes = []
    for kind, port in ROUTE_KINDS:
        spec = {"parentRefs": [copy.deepcopy(dict(ref)) for ref in parent_refs],
                "rules": [{"backendRefs": _backend_refs(owner.name, port, stable, candidate, weight)}]}
        routes.append({"apiVersion": GATEWAY_API_VERSION, "kind": kind, "metadata": _metadata(owner), "spec": spec})
    return routes
