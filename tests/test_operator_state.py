"""The operator's memory of InferenceServices goes with them: 2,000 created and deleted on the real API server, in
eight rounds of 250 (each round in a namespace of its own, deleted after it), leave the state's size (operator/state.py)
where it was after every round, and the memory the process uses where it was once it has reached its working size.

What is asserted is memory in use, not RSS (issue #32). tests/heap_probe, loaded into the operator, reports it once
each round's namespace is gone and the operator has worked off the round's events. Over eight rounds, the live Python
objects (75,332 to 75,394), pymalloc's bytes in live blocks (27.5 to 27.6 MiB) and glibc's allocated chunks (20.1 to
20.7 MiB) stayed flat, while RSS rose (148, 151, 150, 154, 156, 157, 159, 164 MiB): the allocators keep what was freed.
glibc keeps freed chunks for reuse rather than return them, in up to one arena per thread (the operator has 19): 33 MiB
held after the first round, 53 after the eighth, for 20 in use; pymalloc frees a 1 MiB arena only when every block in
it is free, so a burst's short-lived watch bodies leave arenas pinned by the few long-lived objects made meanwhile (in
another run 88 MiB of arenas after the first round, 104 after the eighth, for 28 MiB of live blocks). That is the 2-4
MiB a round of the full-suite runs; RSS is printed, not asserted. Taken without waiting for the operator to work off
the events, figures were up to 35,000 objects and 28 MiB higher: the events still in flight.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cluster_operator_support import Operator, wait
from cluster_support import Api, Kubectl, LocalCluster, install_crd, new_namespace
from operator_support import deployment_path, is_path
from prometheus_client.parser import text_string_to_metric_families

from kubeinfer.operator import metrics

ROUNDS, PER_ROUND = 8, 250  # 2,000 in all
WARM = 2  # the round (from 0) after which the working size is reached: later rounds are compared with it
# How far figures of the idle operator differ with no leak: measured, pymalloc's live bytes by 0.2 MiB, live objects
# by 100 of 75,400, glibc's allocated chunks by 0.6 MiB, but now and then one round's figures stand out, idle as they
# are (once 500 objects and 3.4 MiB of glibc chunks more, gone the next round: a connection's buffers, say). So the
# larger figures of rounds WARM and WARM + 1 are compared with the smaller of the last two rounds: a leak grows in
# both, a passing extra in one. One dict leaked per InferenceService would add at least 750 objects between them
# (three rounds of 250); 2 KiB each, 1.5 MiB.
PYMALLOC_SLACK_MIB, OBJECTS_SLACK, MALLOC_SLACK_MIB = 1.0, 0.005, 3.0
# Idle: kopf's per-object workers (and the last event each holds) go 5 s after their object's last event.
SETTLE_SECONDS, SETTLED = 6.0, 0.002
PROBE = Path(__file__).parent / "heap_probe"


@pytest.fixture(scope="module")
def probes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the operator's heap probe writes its figures."""
    return tmp_path_factory.mktemp("heap")


@pytest.fixture(scope="module")
def operator(kube_cluster: LocalCluster, probes: Path, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Operator]:
    kubectl = Kubectl(kube_cluster.kubeconfig, tmp_path_factory.mktemp("kubectl"))
    install_crd(kubectl)
    pythonpath = os.pathsep.join(p for p in (str(PROBE), os.environ.get("PYTHONPATH", "")) if p)
    running = Operator(kube_cluster.kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log",
                       "--runtime-image", "registry.example.com/kubeinfer/runtime:state",
                       env={"PYTHONPATH": pythonpath, "KUBEINFER_HEAP_PROBE": str(probes)})
    yield running
    assert running.stop() == 0, running.logs()


def tracked(operator: Operator) -> float:
    text = operator.get("/metrics", operator.metrics_port) or ""
    return next(sample.value for family in text_string_to_metric_families(text) if family.name == metrics.TRACKED
                for sample in family.samples)


def memory(operator: Operator, probes: Path) -> dict[str, float]:
    """The operator's memory figures now (tests/heap_probe writes them on SIGUSR1)."""
    written = probes / f"probe-{len(list(probes.glob('probe-*.json'))) + 1}.json"
    operator.process.process.send_signal(signal.SIGUSR1)
    wait(operator, lambda: written.exists(), f"the operator's heap probe {written.name}", timeout=60)
    return json.loads(written.read_text())


def settled(operator: Operator, probes: Path) -> dict[str, float]:
    """The figures once two in a row, SETTLE_SECONDS apart, agree on the live objects: the operator has worked off
    the watch events the round sent (a namespace gone does not mean its last DELETED events are processed)."""
    last = memory(operator, probes)
    for _ in range(20):
        time.sleep(SETTLE_SECONDS)
        now = memory(operator, probes)
        if abs(now["objects"] - last["objects"]) <= SETTLED * last["objects"]:
            return now
        last = now
    raise AssertionError(f"the operator's live objects never settled: last {last}\n{operator.logs()}")


def resource(name: str) -> dict[str, Any]:
    # replicas 0: the children exist, no pods (a thousand would not fit the fake nodes)
    return {"apiVersion": "kubeinfer.io/v1alpha1", "kind": "InferenceService", "metadata": {"name": name},
            "spec": {"task": "detect", "model": {"uri": "/models/m.onnx"}, "replicas": 0}}


def one_round(api: Api, operator: Operator, probes: Path, before: float, index: int
              ) -> tuple[float, dict[str, float]]:
    """PER_ROUND InferenceServices created, reconciled and deleted, their namespace deleted: (seconds until the state
    was back, the operator's memory once the namespace is gone and the operator idle)."""
    label, ns = f"round {index}", new_namespace(api, "state")
    names = [f"s{i}" for i in range(PER_ROUND)]
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: api.create(is_path(ns), resource(n)), names))
    wait(operator, lambda: all(api.get(deployment_path(ns, n)) is not None for n in names[-20:])
         and tracked(operator) >= before + PER_ROUND, f"{label}: {PER_ROUND} reconciled", timeout=300)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: api.delete(is_path(ns, n)), names))
    wait(operator, lambda: tracked(operator) == before, f"{label}: the state back to {before}", timeout=300)
    seconds = time.monotonic() - started
    api.delete(f"/api/v1/namespaces/{ns}")
    wait(operator, lambda: api.get(f"/api/v1/namespaces/{ns}") is None, f"{label}: namespace {ns} gone", timeout=300)
    return seconds, settled(operator, probes)


def test_a_thousand_created_and_deleted_leave_no_state_behind(operator: Operator, probes: Path,
                                                              kube_cluster: LocalCluster) -> None:
    api = Api(kube_cluster)
    before = tracked(operator)
    rounds = [one_round(api, operator, probes, before, i) for i in range(ROUNDS)]  # the state's size is asserted there
    print(f"rounds of {PER_ROUND} created and deleted (MiB): " + "; ".join(
        f"{seconds:.0f} s, in use {m['in_use_mib']:.1f} (pymalloc {m['pymalloc_used_mib']:.1f} of "
        f"{m['pymalloc_arenas_mib']:.0f} in arenas, malloc {m['malloc_used_mib']:.1f} of {m['malloc_held_mib']:.1f}), "
        f"{m['objects']:.0f} objects, RSS {m['rss_mib']:.0f}" for seconds, m in rounds))
    figures = [m for _, m in rounds]
    for key, slack in (("objects", OBJECTS_SLACK * figures[WARM]["objects"]),
                       ("pymalloc_used_mib", PYMALLOC_SLACK_MIB), ("malloc_used_mib", MALLOC_SLACK_MIB)):
        warm = max(m[key] for m in figures[WARM:WARM + 2])
        last = min(m[key] for m in figures[-2:])
        assert last <= warm + slack, (f"{key}: {warm:.1f} after rounds {WARM + 1}-{WARM + 2}, "
                                     f"{last:.1f} after rounds {ROUNDS - 1}-{ROUNDS}")
