"""How a Client spreads calls over replicas: the service's DNS name, round-robin, and which calls are retried.

A ClusterIP Service pins a gRPC client's one HTTP/2 connection to one pod, so the clients resolve the headless
``NAME-pods`` Service instead (every ready pod's address) and balance per call with gRPC's ``round_robin``
policy. The runtime's ``--grpc-max-connection-age`` closes connections now and then, which makes the client
re-resolve and so find pods added by a scale-up.

gRPC resolves a name again at most every 30 s by default; a balanced client asks again at most every
``RERESOLVE_SECONDS`` instead, so that when a rollout replaces the pods it knows, the first one going (its
connection closes) makes it look up the new ones at once (the runtimes keep serving while draining for longer than
CoreDNS caches an answer: kubeinfer.operator.render.SHUTDOWN_DELAY).

Retries (gRPC's retryPolicy, in the channel's service config): only UNAVAILABLE (a replica gone, draining,
unreachable or still loading) and CANCELLED (what gRPC's core answers a call that reaches a replica in the
instant its drain begins; a call the client itself cancels is over and never retried) are retried, up to
``RETRY_ATTEMPTS`` attempts in all with exponential backoff, and only for calls that are safe to repeat: the unary
inference calls (Detect, Classify, Recognize), which have no side effect, GetModelInfo and the health check.
Streams (ClassifyClip, StreamClassify, ProcessVideo,
ProcessVideoFile) are never retried: their frames may already have changed state on a replica. Calls do not
wait for a replica to be ready (wait-for-ready off), so a name that resolves to nothing fails at once with
UNAVAILABLE naming it.
"""

from __future__ import annotations

import json

BALANCED_SCHEMES = ("dns:", "ipv4:", "ipv6:")
RETRY_ATTEMPTS = 5
RERESOLVE_SECONDS = 1.0
RETRIED_CODES = ("UNAVAILABLE", "CANCELLED")
RETRIED_METHODS = (("kubeinfer.v1.Inference", "GetModelInfo"), ("kubeinfer.v1.Inference", "Detect"),
                   ("kubeinfer.v1.Inference", "Classify"), ("kubeinfer.v1.Inference", "Recognize"),
                   ("grpc.health.v1.Health", "Check"))


def service_target(name: str, namespace: str = "default", port: int = 8001,
                   cluster_domain: str = "cluster.local", dns_server: str = "") -> str:
    """The gRPC target of an InferenceService's headless ``NAME-pods`` Service (every ready pod), resolved by
    ``dns_server`` (``host:port``) or, by default, the system's resolver."""
    return f"dns://{dns_server}/{name}-pods.{namespace}.svc.{cluster_domain}:{port}"


def balances(target: str) -> bool:
    """Whether ``target`` names several addresses that gRPC balances over (dns:, ipv4:, ipv6: schemes)."""
    return target.startswith(BALANCED_SCHEMES)


def channel_options(target: str) -> list[tuple[str, object]]:
    """Channel arguments for ``target``: for a balanced name, a quick look-up again when a connection closes."""
    if not target.startswith("dns:"):
        return []
    return [("grpc.dns_min_time_between_resolutions_ms", int(RERESOLVE_SECONDS * 1000))]


def service_config(*, round_robin: bool, retries: bool) -> str:
    """The channel's service config as JSON: the LB policy and the retry policy of the safe calls."""
    method: dict[str, object] = {"name": [{"service": s, "method": m} for s, m in RETRIED_METHODS],
                                 "waitForReady": False}
    if retries:
        method["retryPolicy"] = {"maxAttempts": RETRY_ATTEMPTS, "initialBackoff": "0.05s", "maxBackoff": "1s",
                                 "backoffMultiplier": 2, "retryableStatusCodes": list(RETRIED_CODES)}
    config: dict[str, object] = {"methodConfig": [method]}
    if round_robin:
        config["loadBalancingConfig"] = [{"round_robin": {}}]
    return json.dumps(config)
