"""Clients follow a progressive rollout's traffic table: the split between the stable and the candidate revision is
exact whatever their replica counts, a new weight is followed within a refresh, stream ids stay on their revision
while the weight grows, and a candidate gone before the table says so costs no failed call.

Four real runtimes listen on 127.0.0.2-.5 (one gRPC port) and read one ``--traffic-file``, as every revision's
pods mount the operator's NAME-traffic ConfigMap, and serve it in GetModelInfo. The test's DNS server names which
of them are the stable revision (``colours-aaaaaaaaaa``) and which the candidate (``colours-bbbbbbbbbb``), as the
revisions' headless Services do, and answers ``NAME-pods`` with all four (it selects every revision during weight
steps). Splits are counted from each runtime's own /metrics (kubeinfer_requests_total).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from classify_support import solid
from dns_support import DnsServer
from replica_support import REPLICAS_NAME, Replica, ReplicaSet, replica_set
from runtime_support import BackgroundTraffic, wait_for

from kubeinfer.clients import Client, StreamRouter
from kubeinfer.clients.revisions import RevisionTable, Split, stream_on_candidate
from kubeinfer.v1 import inference_pb2 as pb

STABLE_REV, CANDIDATE_REV = "aaaaaaaaaa", "bbbbbbbbbb"
STABLE_NAME = f"colours-{STABLE_REV}.vision.svc.cluster.test"
CANDIDATE_NAME = f"colours-{CANDIDATE_REV}.vision.svc.cluster.test"
CALLS = 2000
RED, BLUE = solid("red", 16, 16), solid("blue", 16, 16)

# ---------------------------------------------------------------- the table alone (its fetch is a parameter)


def table(generation: int, stable: tuple[str, str], candidate: tuple[str, str] | None = None,
          weight: int = 0) -> pb.Traffic:
    """A traffic table: ``stable``/``candidate`` are (revision, ``host:port`` target)."""
    traffic = pb.Traffic(generation=generation, stable=pb.RevisionTarget(revision=stable[0], target=stable[1]),
                         candidate_weight=weight)
    if candidate is not None:
        traffic.candidate.CopyFrom(pb.RevisionTarget(revision=candidate[0], target=candidate[1]))
    return traffic


class Tables:
    """The fetch and the per-target resources of a RevisionTable: what it opened and closed, in order."""

    def __init__(self) -> None:
        self.traffic: pb.Traffic | None = None
        self.opened: list[str] = []
        self.closed: list[str] = []

    def table(self, **kwargs: float) -> RevisionTable[str]:
        return RevisionTable(lambda: self.traffic, self._open, self.closed.append, authority="10.0.0.10:53",
                             refresh_seconds=3600, **kwargs)

    def _open(self, target: str) -> str:
        self.opened.append(target)
        return target


STABLE_DNS = "dns://10.0.0.10:53/s:8001"
CANDIDATE_DNS = "dns://10.0.0.10:53/c:8001"


def picks(revisions: RevisionTable[str], count: int) -> list[str | None]:
    chosen = []
    for _ in range(count):
        lease = revisions.pick()
        chosen.append(None if lease is None else lease.value)
        if lease is not None:
            lease.release()
    return chosen


def test_smooth_weighted_round_robin_is_exact_and_interleaved() -> None:
    tables = Tables()
    tables.traffic = table(1, ("s", "s:8001"), ("c", "c:8001"), 10)
    revisions = tables.table()
    assert revisions.split == Split(1, "s", STABLE_DNS, "c", CANDIDATE_DNS, 10)  # resolved as the service is
    chosen = picks(revisions, 1000)
    assert chosen.count(CANDIDATE_DNS) == 100
    gaps = [i for i, target in enumerate(chosen) if target == CANDIDATE_DNS]
    assert {b - a for a, b in itertools.pairwise(gaps)} == {10}  # one in ten, never two in a row
    tables.traffic = table(2, ("s", "s:8001"), ("c", "c:8001"), 50)
    revisions.refresh()
    assert picks(revisions, 4) in ([STABLE_DNS, CANDIDATE_DNS] * 2, [CANDIDATE_DNS, STABLE_DNS] * 2)
    assert sorted(tables.opened) == [CANDIDATE_DNS, STABLE_DNS]  # a new weight keeps the channels
    revisions.close()
    assert sorted(tables.closed) == sorted(tables.opened)


def test_calls_arriving_during_the_first_fetch_wait_for_it() -> None:
    fetched: list[float] = []

    def slow_fetch() -> pb.Traffic:
        fetched.append(time.monotonic())
        time.sleep(0.3)
        return table(1, ("s", "s:8001"), ("c", "c:8001"), 50)

    revisions: RevisionTable[str] = RevisionTable(slow_fetch, str, lambda _: None, refresh_seconds=3600)
    with ThreadPoolExecutor(8) as pool:
        chosen = list(pool.map(lambda _: picks(revisions, 1)[0], range(8)))
    assert len(fetched) == 1
    assert sorted(chosen, key=str) == ["dns:///c:8001"] * 4 + ["dns:///s:8001"] * 4  # none sent past the split
    revisions.close()


def test_a_stream_id_on_the_candidate_stays_there_at_every_larger_weight() -> None:
    ids = [f"camera-{i}" for i in range(5000)]
    for weight in range(1, 100):
        on = [s for s in ids if stream_on_candidate(s, weight)]
        assert all(stream_on_candidate(s, weight + 1) for s in on)
    assert 450 <= sum(stream_on_candidate(s, 10) for s in ids) <= 550
    assert all(stream_on_candidate(s, 100) for s in ids) and not any(stream_on_candidate(s, 0) for s in ids)


def test_an_older_generation_is_ignored_until_no_newer_one_is_seen_for_a_while() -> None:
    tables = Tables()
    tables.traffic = table(5, ("s", "s:8001"), ("c", "c:8001"), 50)
    revisions = tables.table(reset_seconds=0.5)
    assert revisions.split is not None and revisions.split.weight == 50
    tables.traffic = table(4, ("s", "s:8001"), ("c", "c:8001"), 10)  # a replica the kubelet has not updated
    assert revisions.refresh() is not None and revisions.split.weight == 50
    time.sleep(0.6)  # only generation 4 for longer than reset_seconds: the table was recreated
    split = revisions.refresh()
    assert split is not None and (split.generation, split.weight) == (4, 10)
    revisions.close()


def test_a_revision_dropped_from_the_table_is_closed_once_its_last_call_is_done() -> None:
    tables = Tables()
    tables.traffic = table(1, ("s", "s:8001"), ("c", "c:8001"), 100)
    revisions = tables.table()
    lease = revisions.pick()
    assert lease is not None and lease.value == CANDIDATE_DNS
    tables.traffic = table(2, ("c", "c:8001"))  # promoted: the candidate is the stable one, no split
    revisions.refresh()
    assert revisions.split is None and revisions.pick() is None
    assert tables.closed == [STABLE_DNS]  # the old stable one had no call on it
    lease.release()
    assert tables.closed == [STABLE_DNS, CANDIDATE_DNS]
    revisions.close()


def test_a_revision_set_aside_sends_its_share_to_name_pods_for_a_while() -> None:
    tables = Tables()
    tables.traffic = table(1, ("s", "s:8001"), ("c", "c:8001"), 50)
    revisions = tables.table(down_seconds=0.5)
    revisions.set_aside(CANDIDATE_DNS)
    assert sorted(picks(revisions, 10), key=str) == [None] * 5 + [STABLE_DNS] * 5
    time.sleep(0.6)
    assert picks(revisions, 10).count(CANDIDATE_DNS) == 5
    revisions.close()


# ---------------------------------------------------------------- real runtimes as two revisions


@pytest.fixture(scope="module")
def traffic_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("traffic") / "traffic.json"  # none yet: the runtimes start without a table


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory, traffic_file: Path) -> Iterator[ReplicaSet]:
    with replica_set(tmp_path_factory.mktemp("rollout"), "--traffic-file", str(traffic_file), "--max-streams",
                     "1000", "--stream-idle-seconds", "600") as started:
        started.start(4)
        yield started


class Rollout:
    """Which runtimes are which revision (DNS) and the table in the runtimes' traffic file."""

    def __init__(self, dns: DnsServer, replicas: ReplicaSet, path: Path) -> None:
        self.dns, self.replicas, self.path, self.port = dns, replicas, path, replicas.port
        self.generation = json.loads(path.read_text())["generation"] if path.exists() else 0  # it only grows
        self.stable: list[Replica] = []
        self.candidate: list[Replica] = []

    def revisions(self, stable: list[Replica], candidate: list[Replica]) -> None:
        self.stable, self.candidate = stable, candidate
        self.dns.set(STABLE_NAME, [r.host for r in stable])
        self.dns.set(CANDIDATE_NAME, [r.host for r in candidate])
        self.dns.set(REPLICAS_NAME, [r.host for r in stable + candidate])

    def weight(self, weight: int | None) -> None:
        """Write a new table (the candidate at ``weight``, or none) and wait until every runtime serves it."""
        self.generation += 1
        body: dict[str, object] = {"generation": self.generation,
                                   "stable": {"revision": STABLE_REV, "target": f"{STABLE_NAME}:{self.port}"},
                                   "candidateWeight": weight or 0, "shadowPercent": 0}
        if weight is not None:
            body["candidate"] = {"revision": CANDIDATE_REV, "target": f"{CANDIDATE_NAME}:{self.port}"}
        staged = self.path.with_suffix(".new")
        staged.write_text(json.dumps(body))
        staged.replace(self.path)  # one atomic swap, as the kubelet's ..data symlink
        for replica in self.replicas.live:
            with Client(replica.grpc_target, timeout=10) as direct:
                wait_for(lambda c=direct: (t := c.traffic_table()) is not None and t.generation == self.generation,
                         f"{replica.host} to load generation {self.generation}", timeout=10)

    def client(self, **kwargs: object) -> Client:
        return Client.for_service("colours", "vision", port=self.port, cluster_domain="cluster.test",
                                  dns_server=self.dns.authority, timeout=30, **kwargs)

    def served(self, rpc: str = "Classify") -> dict[str, int]:
        return {r.host: r.served(rpc) for r in self.stable + self.candidate}

    def candidate_share(self, before: dict[str, int], after: dict[str, int]) -> tuple[int, int]:
        """(calls on the candidate, calls in all) between two ``served()``."""
        delta = {host: after[host] - before.get(host, 0) for host in after}
        return sum(delta[r.host] for r in self.candidate), sum(delta.values())


@pytest.fixture
def rollout(dns: DnsServer, replicas: ReplicaSet, traffic_file: Path) -> Rollout:
    return Rollout(dns, replicas, traffic_file)


def classify(client: Client, calls: int, threads: int = 1) -> None:
    def one(_: int) -> None:
        assert client.classify([RED], top_k=1)[0].label == "red"

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(calls)))


def test_without_a_table_or_a_weight_calls_go_to_every_pod_as_before(rollout: Rollout,
                                                                      replicas: ReplicaSet) -> None:
    """First in the module: the runtimes have no traffic file yet (no rollout), then a shadow step's table."""
    live = replicas.live
    rollout.revisions(live[:3], live[3:])
    for step in ("no table", "shadow step"):
        if step == "shadow step":
            rollout.weight(0)  # a candidate without weight
        with rollout.client() as client:
            before, fetches = rollout.served(), sum(rollout.served("GetModelInfo").values())
            classify(client, 300)
            assert client.revisions is not None and client.revisions.split is None
            after = rollout.served()
            assert sum(rollout.served("GetModelInfo").values()) - fetches == 1, step  # looked for once, on first use
        per_replica = {host: after[host] - before[host] for host in after}
        assert sum(per_replica.values()) == 300
        assert all(count >= 50 for count in per_replica.values()), (step, per_replica)  # round-robin over all four


@pytest.mark.parametrize(("weight", "candidates"), [(10, 1), (50, 1), (10, 3), (50, 3)])
def test_the_split_between_revisions_is_the_tables_weight_whatever_their_replica_counts(
        rollout: Rollout, replicas: ReplicaSet, weight: int, candidates: int) -> None:
    live = replicas.live
    rollout.revisions(live[candidates:], live[:candidates])
    rollout.weight(weight)
    with rollout.client() as client:
        classify(client, 100)  # the table fetched, every channel connected
        before = rollout.served()
        classify(client, CALLS, threads=4)
        after = rollout.served()
    on_candidate, total = rollout.candidate_share(before, after)
    per_replica = {host: after[host] - before[host] for host in after}
    print(f"weight {weight}, {candidates} candidate replica(s) of 4: {on_candidate} of {total} on the candidate; "
          f"per replica {per_replica}")
    assert total == CALLS
    assert abs(100 * on_candidate / total - weight) <= 3
    for revision, share in ((rollout.candidate, on_candidate), (rollout.stable, total - on_candidate)):
        for replica in revision:  # round-robin within the revision
            assert per_replica[replica.host] >= 0.6 * share / len(revision), per_replica


def test_a_new_weight_is_followed_within_a_refresh(rollout: Rollout, replicas: ReplicaSet) -> None:
    live = replicas.live
    rollout.revisions(live[1:], live[:1])
    rollout.weight(10)
    with rollout.client() as client:
        classify(client, 100)
        before = rollout.served()
        classify(client, 100)
        assert rollout.candidate_share(before, rollout.served()) == (10, 100)
        rollout.weight(50)  # returns once every runtime serves it
        changed = time.monotonic()
        while True:
            before = rollout.served()
            classify(client, 100)
            on_candidate, _ = rollout.candidate_share(before, rollout.served())
            if on_candidate == 50:
                break
            assert on_candidate <= 50
            assert time.monotonic() - changed < 10, "the new weight was never followed"
        followed = time.monotonic() - changed
    print(f"weight 10 -> 50 followed {followed:.1f}s after every runtime served it")
    assert followed < 6.5


def test_stream_ids_stay_on_their_revision_while_the_weight_grows(rollout: Rollout, replicas: ReplicaSet) -> None:
    live = replicas.live
    rollout.revisions(live[2:], live[:2])
    rollout.weight(10)
    streams = [f"rollout-camera-{i:03d}" for i in range(200)]
    early = [s for s in streams if stream_on_candidate(s, 10)]
    late = [s for s in streams if stream_on_candidate(s, 50) and s not in early]
    assert len(early) >= 10 and len(late) >= 50
    candidate_hosts = {r.grpc_target for r in rollout.candidate}
    with StreamRouter.for_service("colours", "vision", port=rollout.port, cluster_domain="cluster.test",
                                  dns_server=rollout.dns.authority, timeout=30, table_refresh_seconds=1) as router:
        for stream in streams:
            predictions = list(router.stream_classify([RED, RED], stream_id=stream, timeout=30))
            assert [p.error for p in predictions] == [None, None]
            assert (router.owner(stream) in candidate_hosts) == (stream in early), stream
        held = router.model_infos(timeout=10)
        assert sum(held[h].active_streams for h in candidate_hosts) == len(early)

        rollout.weight(50)
        wait_for(lambda: router.revisions is not None and router.revisions.split is not None
                 and router.revisions.split.weight == 50, "the router to take weight 50", timeout=10)
        for stream in streams:
            (frame,) = router.stream_classify([BLUE], stream_id=stream, timeout=30)
            on_candidate = router.owner(stream) in candidate_hosts
            if stream in late:  # moved to the candidate: a new window there
                assert on_candidate and (frame.window_restarted, frame.window_fill) == (True, 1), stream
            else:  # the same revision and replica as before: the window goes on (R, R, B)
                assert on_candidate == (stream in early), stream
                assert (frame.window_restarted, frame.window_fill) == (False, 3), stream
        held = router.model_infos(timeout=10)
        assert sum(held[h].active_streams for h in candidate_hosts) == len(early) + len(late)
    print(f"{len(early)} of {len(streams)} stream ids on the candidate at weight 10 stayed there at 50; "
          f"{len(late)} joined them")


def test_a_clients_own_streams_follow_the_split_by_stream_id(rollout: Rollout, replicas: ReplicaSet) -> None:
    live = replicas.live
    rollout.revisions(live[2:], live[:2])
    rollout.weight(10)
    streams = [f"client-camera-{i:03d}" for i in range(100)]
    before = rollout.served("StreamClassify")
    with rollout.client() as client:
        for stream in streams:
            assert [p.error for p in client.stream_classify([RED], stream_id=stream, timeout=30)] == [None]
    on_candidate, total = rollout.candidate_share(before, rollout.served("StreamClassify"))
    assert (on_candidate, total) == (sum(stream_on_candidate(s, 10) for s in streams), len(streams))


def test_a_candidate_gone_before_the_table_says_so_costs_no_failed_call(rollout: Rollout,
                                                                          replicas: ReplicaSet) -> None:
    """Last in the module: the candidate is killed."""
    live = replicas.live
    rollout.revisions(live[:3], live[3:])
    rollout.weight(50)
    (candidate,) = rollout.candidate
    with rollout.client() as client:
        classify(client, 20)
        traffic = BackgroundTraffic(lambda: classify(client, 1), threads=4)
        try:
            time.sleep(1.0)
            os.kill(candidate.pid, signal.SIGKILL)  # no drain: in-flight calls lost, both names still list it
            candidate.process.wait(10)
            killed_at = traffic.ok
            time.sleep(2.0)
            listed = traffic.ok
            rollout.revisions(rollout.stable, [])  # its addresses gone from DNS
            time.sleep(2.0)
            unlisted = traffic.ok
            rollout.weight(None)  # the operator rolls back: no candidate
            time.sleep(6.0)
        finally:
            traffic.stop()  # every call answered
        assert client.revisions is not None and client.revisions.split is None
    print(f"calls answered: {listed - killed_at} in 2 s with the dead candidate listed, {unlisted - listed} in 2 s "
          f"unlisted, {traffic.ok - unlisted} in 6 s until and after the rollback")
    assert listed - killed_at > 20 and unlisted - listed > 20
