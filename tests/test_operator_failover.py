"""Several operator replicas with kopf's peering, against the real control plane: how fast a standby takes over
from a replica that was killed, and what it finds when it does.

Each replica authenticates as a ServiceAccount of its own holding exactly ``kubeinfer.operator.kube`` RBAC_RULES and
PEERING_RBAC_RULES (the chart's rules with peering), as in tests/test_operator_modes.py. A replica is killed with
SIGKILL, so it never removes its keep-alive: the standby has to wait for it to lapse.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_operator_support import Operator, operator_account, wait
from cluster_support import Api, Kubectl, LocalCluster, new_namespace, wait_established
from operator_support import CRD_PATH, deployment_path, is_path, service_path

from kubeinfer.operator.kube import PEERING_RBAC_RULES, RBAC_RULES
from kubeinfer.operator.peering import DEFAULT_LIFETIME

IMAGE = "registry.example.com/kubeinfer/runtime:failover"
PEERING_CRDS = CRD_PATH.parents[1] / "charts" / "kubeinfer" / "charts" / "kopf-peering" / "crds"
PAUSED, RESUMED = "Pausing operations in favour of", "Resuming operations after the pause"
_accounts = itertools.count()


@pytest.fixture(scope="module", autouse=True)
def crds(kubectl: Kubectl) -> None:
    """The InferenceService CRD and kopf's peering CRDs."""
    kubectl("apply", "-f", str(CRD_PATH), "-f", str(PEERING_CRDS))
    wait_established(kubectl, "inferenceservices.kubeinfer.io", "clusterkopfpeerings.kopf.dev",
                     "kopfpeerings.kopf.dev")


@pytest.fixture(scope="module")
def home(api: Api, kubectl: Kubectl) -> Iterator[str]:
    """The namespace of the replicas' ServiceAccounts."""
    name = new_namespace(api, "failover")
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture()
def ns(api: Api, kubectl: Kubectl) -> Iterator[str]:
    name = new_namespace(api, "failover")
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture()
def replicas(kube_cluster: LocalCluster, api: Api, kubectl: Kubectl, home: str,
             tmp_path: Path) -> Iterator[Callable[..., Operator]]:
    """Start operator replicas sharing one fresh ClusterKopfPeering; every one still running is stopped after."""
    peering = f"{home}-{next(_accounts)}"
    kubectl.apply({"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": peering}})
    started: list[Operator] = []

    def start(*args: str, wait_live: bool = True) -> Operator:
        name = f"replica-{next(_accounts)}"
        _, kubeconfig = operator_account(kube_cluster, api, home, name, RBAC_RULES + PEERING_RBAC_RULES,
                                         tmp_path / f"{name}.kubeconfig")
        replica = Operator(kubeconfig, tmp_path / f"{name}.log", "--peering", peering, "--runtime-image", IMAGE,
                           *args, wait_live=wait_live)
        started.append(replica)
        return replica

    yield start
    for replica in started:
        replica.stop()
    kubectl("delete", "clusterkopfpeering", peering, "--wait=false", check=False)


def create(api: Api, ns: str, name: str) -> None:
    api.create(is_path(ns), {"apiVersion": "kubeinfer.io/v1alpha1", "kind": "InferenceService",
                             "metadata": {"name": name},
                             "spec": {"task": "detect", "model": {"uri": "/models/m.pt"},
                                      "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}})


def ready(api: Api, ns: str, name: str) -> dict[str, Any] | None:
    status = ((api.get(is_path(ns, name)) or {}).get("status")) or {}
    return status if status.get("phase") == "Ready" else None


def logged(replica: Operator, text: str, after: int = 0) -> bool:
    return text in replica.logs(10**8)[after:]


def kill(replica: Operator) -> float:
    """SIGKILL: no clean exit, so its keep-alive stays in the peering object until it lapses."""
    replica.process.process.kill()
    replica.process.process.wait(10)
    return time.monotonic()


@pytest.mark.slow  # 15-25 s: the standby waits for the killed replica's keep-alive to lapse
def test_a_standby_takes_over_within_the_peering_lifetime_after_a_sigkill(
        api: Api, ns: str, replicas: Callable[..., Operator]) -> None:
    standby = replicas("--priority", "50")
    active = replicas("--priority", "100")
    wait(standby, lambda: logged(standby, PAUSED), "the standby to pause")
    create(api, ns, "before")
    wait(active, lambda: ready(api, ns, "before"), "Ready by the active replica")
    seen = len(standby.logs(10**8))

    killed = kill(active)
    create(api, ns, "after")  # waits for whoever works next
    wait(standby, lambda: logged(standby, RESUMED, seen), "the standby to resume", timeout=DEFAULT_LIFETIME + 20)
    resumed = time.monotonic()
    wait(standby, lambda: ready(api, ns, "after"), "Ready by the standby")
    served = time.monotonic()
    failover, until_ready = resumed - killed, served - killed
    print(f"\nfailover after SIGKILL: resumed after {failover:.1f} s, the new resource Ready after "
          f"{until_ready:.1f} s (peering lifetime {DEFAULT_LIFETIME} s)")
    # The killed replica's last keep-alive lapses at most a lifetime after the kill; the standby then resumes at once.
    assert failover <= DEFAULT_LIFETIME + 1.5, failover
    assert until_ready <= 15, until_ready
    assert api.get(deployment_path(ns, "after")) is not None and api.get(service_path(ns, "after")) is not None


@pytest.mark.slow  # 20-30 s: a takeover after a SIGKILL
def test_children_deleted_while_paused_are_recreated_when_the_standby_resumes(
        api: Api, ns: str, replicas: Callable[..., Operator]) -> None:
    """The issue's steps: B works, A takes over (B pauses), A is killed, children are deleted, B resumes."""
    b = replicas("--priority", "50")
    create(api, ns, "s1")
    first = wait(b, lambda: ready(api, ns, "s1"), "s1 Ready by B")
    old = {path: api.get(path)["metadata"]["uid"] for path in (deployment_path(ns, "s1"), service_path(ns, "s1"))}
    a = replicas("--priority", "100")
    wait(b, lambda: logged(b, PAUSED), "B to pause")
    seen = len(b.logs(10**8))
    kill(a)
    for path in old:
        assert api.delete(path) == 200
    wait(b, lambda: all(api.get(path) is None for path in old), "the children gone")
    wait(b, lambda: logged(b, RESUMED, seen), "B to resume", timeout=DEFAULT_LIFETIME + 20)
    # B's cache still holds both children as they were: it must not trust it.
    recreated = wait(b, lambda: all(api.get(path) for path in old) and {
        path: api.get(path)["metadata"]["uid"] for path in old}, "the children re-created", timeout=15)
    assert all(recreated[path] != old[path] for path in old), (old, recreated)
    status = wait(b, lambda: ready(api, ns, "s1"), "s1 Ready again with the new Deployment")
    assert status["endpoint"] == first["endpoint"] and status["readyReplicas"] == 1, status
    # The new children are watched like the old ones: a hand edit of the new Service is repaired.
    api.patch(service_path(ns, "s1"), {"spec": {"selector": {"edited": "by-hand"}}})
    wait(b, lambda: "edited" not in api.get(service_path(ns, "s1"))["spec"]["selector"], "the hand edit repaired")


def exited(replica: Operator) -> int | None:
    return replica.process.process.poll()


@pytest.mark.slow  # 10-20 s: the tie is seen at the next read of the peering object
def test_of_two_replicas_started_together_with_one_priority_exactly_one_works(
        api: Api, ns: str, replicas: Callable[..., Operator]) -> None:
    pair = [replicas("--priority", "7", wait_live=False), replicas("--priority", "7", wait_live=False)]
    gone = wait(None, lambda: [r for r in pair if exited(r) is not None], "one of the two to exit", timeout=40)
    (loser,) = gone
    (winner,) = [r for r in pair if r is not loser]
    assert exited(loser) == 2, loser.logs()
    assert "is alive with --priority 7 too" in loser.logs(), loser.logs()
    create(api, ns, "tied")
    wait(winner, lambda: ready(api, ns, "tied"), "Ready by the one left")
    assert exited(winner) is None


@pytest.mark.slow  # 5-15 s: the newcomer waits to see the live replica's keep-alive move
def test_a_replica_does_not_start_while_a_live_one_has_its_priority(
        api: Api, ns: str, replicas: Callable[..., Operator]) -> None:
    first = replicas("--priority", "7")
    create(api, ns, "kept")
    wait(first, lambda: ready(api, ns, "kept"), "Ready by the first replica")
    seen = len(first.logs(10**8))
    second = replicas("--priority", "7", wait_live=False)
    wait(second, lambda: exited(second) is not None, "the second replica to refuse", timeout=DEFAULT_LIFETIME + 10)
    assert exited(second) == 2
    assert "is alive with --priority 7 too" in second.logs() and "does not start" in second.logs(), second.logs()
    assert not logged(first, "Pausing", seen), first.logs()  # it never joined: the first one never paused
    api.patch(is_path(ns, "kept"), {"spec": {"thresholds": {"iou": 0.6}}})
    wait(first, lambda: (s := ready(api, ns, "kept")) and s.get("observedGeneration") == 2, "the change applied")
