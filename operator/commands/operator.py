"""Run the kubeinfer operator: InferenceService resources become runtime Deployments, Services, HPAs and PDBs.

Every flag can also be set through the environment as KUBEINFER_OPERATOR_<FLAG>, for example
KUBEINFER_OPERATOR_RUNTIME_IMAGE=registry.example.com/kubeinfer:0.1.0 or KUBEINFER_OPERATOR_NAMESPACE=a,b;
a flag given on the command line wins. In a pod it uses its service account, elsewhere $KUBECONFIG.

Several replicas: give them all --peering NAME (a ClusterKopfPeering NAME, or a KopfPeering NAME in each
watched namespace, must exist); the live replica with the highest --priority works, the others stand by, and one
takes over within --peering-lifetime seconds when the active one is killed (at once when it stops cleanly).
Priorities must differ (kopf pauses every replica that sees a live peer of its own priority): a replica refuses to
start while a live one has its priority, and of two started together with one priority the later one exits
(exit status 2), so exactly one works.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import secrets
import socket
import sys
from collections.abc import Callable
from typing import Any

from kubeinfer.operator import peering
from kubeinfer.operator.spec import DEFAULT_RUNTIME_CPU_IMAGE, DEFAULT_RUNTIME_IMAGE

LOG_FORMATS = ("plain", "json", "full")


def _env(name: str, default: Any, kind: Callable[[str], Any] = str) -> Any:
    variable = "KUBEINFER_OPERATOR_" + name.upper().replace("-", "_")
    raw = os.environ.get(variable)
    if raw is None or raw == "":
        return default
    try:
        return kind(raw)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        raise SystemExit(f"kubeinfer operator: {variable}={raw!r}: {exc}") from None


def _log_format(text: str) -> str:
    if text not in LOG_FORMATS:
        raise ValueError(f"must be one of {', '.join(LOG_FORMATS)}")
    return text


def _resources(text: str) -> dict[str, Any]:
    from kubeinfer.operator.spec import parse_resources

    try:
        return parse_resources(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    env_namespaces = [ns.strip() for ns in str(_env("namespace", "")).split(",") if ns.strip()]
    parser.add_argument("--namespace", action="append", default=None, metavar="NS",
                        help="namespace to watch; repeat for several (default: all namespaces; "
                             "env KUBEINFER_OPERATOR_NAMESPACE, comma-separated)")
    parser.set_defaults(env_namespaces=env_namespaces)
    parser.add_argument("--runtime-gpu-image", "--runtime-image", dest="runtime_image", metavar="IMAGE",
                        default=_env("runtime-gpu-image", None) or _env("runtime-image", DEFAULT_RUNTIME_IMAGE),
                        help="the runtime image with torch, for specs without `image` that ask for GPUs or whose "
                             "model only torch loads, and for exporting a .pt detector to ONNX (default "
                             f"{DEFAULT_RUNTIME_IMAGE}; env KUBEINFER_OPERATOR_RUNTIME_GPU_IMAGE)")
    parser.add_argument("--runtime-cpu-image", metavar="IMAGE",
                        default=_env("runtime-cpu-image", DEFAULT_RUNTIME_CPU_IMAGE),
                        help="the lean runtime image (no torch) for specs without `image` whose model ONNX Runtime "
                             "runs on the CPU; give the gpu image's name to serve everything from that one "
                             f"(default {DEFAULT_RUNTIME_CPU_IMAGE}; env KUBEINFER_OPERATOR_RUNTIME_CPU_IMAGE)")
    parser.add_argument("--default-resources", type=_resources, metavar="JSON",
                        default=_env("default-resources", None, _resources),
                        help='resources of runtime containers whose spec sets none, e.g. {"requests": {"cpu": "1"}} '
                             "(default requests cpu 500m, memory 1Gi; env KUBEINFER_OPERATOR_DEFAULT_RESOURCES)")
    parser.add_argument("--node-cache-path", metavar="PATH", default=_env("node-cache-path", None) or None,
                        help="a folder on every node (hostPath, writable by uid 65532) where fetch init containers "
                             "keep s3:// and gs:// objects, so the next pod of a model on that node copies it "
                             "instead of downloading it (default: none; env KUBEINFER_OPERATOR_NODE_CACHE_PATH)")
    parser.add_argument("--node-cache-max-bytes", type=int, metavar="N",
                        default=_env("node-cache-max-bytes", 20 * 1024**3, int),
                        help="the node cache's bound; least recently used objects go past it "
                             "(default 20 GiB; env KUBEINFER_OPERATOR_NODE_CACHE_MAX_BYTES)")
    parser.add_argument("--prometheus-url", metavar="URL", default=_env("prometheus-url", None) or None,
                        help="the Prometheus a rollout (spec.rollout) reads each revision's figures from when its "
                             "spec names none (default: none; env KUBEINFER_OPERATOR_PROMETHEUS_URL)")
    parser.add_argument("--cluster-domain", metavar="DOMAIN", default=_env("cluster-domain", "cluster.local"),
                        help="the cluster's DNS domain, in the names a rollout's traffic table gives each revision's "
                             "Service (default cluster.local; env KUBEINFER_OPERATOR_CLUSTER_DOMAIN)")
    parser.add_argument("--log-format", choices=LOG_FORMATS, default=_env("log-format", "plain", _log_format),
                        help="log line format (default plain; env KUBEINFER_OPERATOR_LOG_FORMAT)")
    parser.add_argument("--metrics-port", type=int, default=_env("metrics-port", 9090, int), metavar="PORT",
                        help="Prometheus metrics port, 0 to disable "
                             "(default 9090; env KUBEINFER_OPERATOR_METRICS_PORT)")
    parser.add_argument("--liveness-port", type=int, default=_env("liveness-port", 8081, int), metavar="PORT",
                        help="kopf liveness endpoint http://HOST:PORT/healthz, 0 to disable "
                             "(default 8081; env KUBEINFER_OPERATOR_LIVENESS_PORT)")
    parser.add_argument("--listen-host", default=_env("listen-host", "0.0.0.0"), metavar="HOST",
                        help="address of the metrics and liveness endpoints (default 0.0.0.0; "
                             "env KUBEINFER_OPERATOR_LISTEN_HOST)")
    parser.add_argument("--peering", default=_env("peering", None), metavar="NAME",
                        help="kopf peering object for leader election between replicas (default: standalone; "
                             "env KUBEINFER_OPERATOR_PEERING)")
    parser.add_argument("--priority", type=int, default=_env("priority", None, int), metavar="N",
                        help="peering priority: the live replica with the highest one works, the others wait; a "
                             "replica refuses to start while a live one has its priority, and of two that started "
                             "together with one priority the later exits (default with --peering: random; "
                             "env KUBEINFER_OPERATOR_PRIORITY)")
    parser.add_argument("--peering-lifetime", type=peering.lifetime, metavar="SECONDS",
                        default=_env("peering-lifetime", peering.DEFAULT_LIFETIME, peering.lifetime),
                        help="with --peering: how long a replica that stopped writing keep-alives (killed) still "
                             "counts as alive, so how long a standby waits before it takes over (default "
                             f"{peering.DEFAULT_LIFETIME}; env KUBEINFER_OPERATOR_PEERING_LIFETIME)")
    parser.add_argument("--verbose", action="store_true",
                        default=_env("verbose", False, lambda v: v.strip().lower() in ("1", "true", "yes")),
                        help="debug logging (env KUBEINFER_OPERATOR_VERBOSE)")


def run(args: argparse.Namespace) -> int:
    """Entry point of `kubeinfer operator`: configure logging and metrics, then run kopf until SIGTERM."""
    import kopf
    from prometheus_client import start_http_server

    from kubeinfer.operator import handlers  # noqa: F401  (registers the handlers with kopf's registry)
    from kubeinfer.operator.kube import ApiError, Kube
    from kubeinfer.operator.render import RuntimeDefaults
    from kubeinfer.operator.render_fetch import NodeCache
    from kubeinfer.operator.rollout_plan import RolloutSettings
    from kubeinfer.operator.state import OperatorState

    for flag, value in (("--runtime-gpu-image", args.runtime_image), ("--runtime-cpu-image", args.runtime_cpu_image)):
        if value.strip() == "":
            print(f"kubeinfer operator: {flag} must not be empty", file=sys.stderr)
            return 2
    if args.node_cache_path is not None and not args.node_cache_path.startswith("/"):
        print(f"kubeinfer operator: --node-cache-path {args.node_cache_path!r} must be an absolute path",
              file=sys.stderr)
        return 2
    if args.node_cache_max_bytes < 1:
        print("kubeinfer operator: --node-cache-max-bytes must be positive", file=sys.stderr)
        return 2
    namespaces = args.namespace if args.namespace else args.env_namespaces
    kopf.configure(debug=args.verbose, verbose=args.verbose, log_format={
        "plain": kopf.LogFormat.PLAIN, "json": kopf.LogFormat.JSON, "full": kopf.LogFormat.FULL}[args.log_format])
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.listen_host)
    host = f"[{args.listen_host}]" if ":" in args.listen_host else args.listen_host
    liveness = f"http://{host}:{args.liveness_port}/healthz" if args.liveness_port else None
    node_cache = NodeCache(args.node_cache_path, args.node_cache_max_bytes) if args.node_cache_path else None
    defaults = RuntimeDefaults(image=args.runtime_image, cpu_image=args.runtime_cpu_image, node_cache=node_cache, **(
        {"resources": args.default_resources} if args.default_resources is not None else {}))
    kube = Kube.from_environment()
    state = OperatorState(defaults, kube, peering_lifetime=args.peering_lifetime,
                          rollout_settings=RolloutSettings(args.prometheus_url, args.cluster_domain))
    # Set by the tie rule, on kopf's event loop: kopf then stops cleanly, handing over at once. An asyncio.Event (it
    # binds to the loop on first use): kopf would wait for a threading.Event in a thread that never ends.
    stop = asyncio.Event()
    priority, identity, tie = args.priority, None, None
    if args.peering is not None:
        if priority is None:  # the live replica with the highest priority works: one random priority per replica
            priority = secrets.randbelow(2**31 - 2) + 1
        identity = peering.new_identity(datetime.datetime.now(datetime.UTC), socket.gethostname(), os.getpid())
        tie = peering.TieBreak(args.peering, peering.peering_namespaces(namespaces or ()), identity, priority,
                               interval=max(1.0, args.peering_lifetime / 4), read=peering.reader(kube, args.peering))
        try:
            tie.check_at_start()
        except peering.PriorityTaken as exc:
            print(f"kubeinfer operator: {exc}", file=sys.stderr)
            return 2
        except ApiError as exc:  # kopf reads the same objects and says more if this persists
            print(f"kubeinfer operator: peering {args.peering} not read ({exc}); starting", file=sys.stderr)
        state.tie_break, state.stop = tie, stop.set
    kopf.run(
        clusterwide=not namespaces,
        namespaces=namespaces or (),
        standalone=args.peering is None,
        peering_name=args.peering,
        priority=priority,
        identity=identity,
        liveness_endpoint=liveness,
        stop_flag=stop,
        memo=kopf.Memo(state=state),
    )
    if tie is not None and tie.refusal is not None:
        print(f"kubeinfer operator: {tie.refusal}", file=sys.stderr)
        return 2
    return 0
