"""Client-side balancing over replicas found through DNS: round-robin per call, scale-up found again after the
runtime's max connection age, a killed replica hidden by retries, a name without addresses failing fast.

Three (then four) real runtimes listen on 127.0.0.2, .3, .4, .5 with one gRPC port, behind a name that a DNS
server of the test answers, as a headless Service's DNS answers with its ready pods.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from classify_support import solid
from dns_support import DnsServer
from replica_support import REPLICAS_NAME, ReplicaSet, replica_set
from runtime_support import BackgroundTraffic

from kubeinfer.clients import Client, RestClient
from kubeinfer.clients.balancing import service_target
from kubeinfer.operator.render import headless_name

MAX_AGE = 2.0  # --grpc-max-connection-age: how soon clients re-resolve and find a new replica
RED = solid("red", 16, 16)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicaSet]:
    with replica_set(tmp_path_factory.mktemp("balancing"), "--grpc-max-connection-age", str(MAX_AGE),
                     "--grpc-max-connection-age-grace", "1") as started:
        started.start(3)
        yield started


@pytest.fixture(scope="module")
def client(dns: DnsServer, replicas: ReplicaSet) -> Iterator[Client]:
    # re-resolve as soon as asked (gRPC waits 30 s between resolutions by default)
    with Client(dns.target(REPLICAS_NAME, replicas.port), timeout=30,
                options=[("grpc.dns_min_time_between_resolutions_ms", 200)]) as connection:
        yield connection


def classify(client: Client, calls: int) -> None:
    for _ in range(calls):
        assert client.classify([RED], top_k=1)[0].label == "red"


def served(replicas: ReplicaSet) -> dict[str, int]:
    return {r.host: r.served("Classify") for r in replicas.live}


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {host: after[host] - before.get(host, 0) for host in after}


def test_for_service_targets_the_headless_service_the_operator_renders() -> None:
    target = service_target("colours", "vision")
    assert target == f"dns:///{headless_name('colours')}.vision.svc.cluster.local:8001"
    with Client.for_service("colours", namespace="vision", port=9001, cluster_domain="example.org") as client:
        assert client.target == "dns:///colours-pods.vision.svc.example.org:9001"
    # REST opens a connection per call: the ClusterIP Service REPLICAS_NAME spreads them
    assert RestClient.for_service("colours", namespace="vision").url == "http://colours.vision.svc.cluster.local:8080"


def test_unary_calls_are_split_evenly_over_three_replicas(client: Client, replicas: ReplicaSet) -> None:
    deadline = time.monotonic() + 30
    while min(served(replicas).values()) == 0:  # every replica connected: the split is measured from here
        assert time.monotonic() < deadline, served(replicas)
        classify(client, 3)
    before = served(replicas)
    classify(client, 300)
    split = delta(before, served(replicas))
    print(f"split of 300: {split}")
    assert sum(split.values()) == 300
    assert all(90 <= count <= 110 for count in split.values()), split


def test_a_replica_added_to_dns_gets_its_share_within_the_connection_age(client: Client, replicas: ReplicaSet,
                                                                          dns: DnsServer) -> None:
    (fourth,) = replicas.start(1)
    dns.set(REPLICAS_NAME, replicas.hosts())
    added = time.monotonic()
    while fourth.served("Classify") == 0:
        assert time.monotonic() - added < MAX_AGE * 1.1 + 1 + 5, "the new replica got no call"
        classify(client, 5)
    found = time.monotonic() - added
    before = served(replicas)
    classify(client, 400)
    split = delta(before, served(replicas))
    print(f"fourth replica found after {found:.1f}s; split of 400: {split}")
    assert all(85 <= count <= 115 for count in split.values()), split


def test_a_replica_killed_mid_run_costs_no_failed_call(client: Client, replicas: ReplicaSet) -> None:
    traffic = BackgroundTraffic(lambda: classify(client, 1), threads=4)
    try:
        time.sleep(1.0)
        victim = replicas.live[0]
        os.kill(victim.pid, signal.SIGKILL)  # no drain: its connections reset, in-flight calls lost
        victim.process.wait(10)
        killed_at = traffic.ok
        time.sleep(3.0)  # the name still resolves to the dead address, as before endpoints catch up
    finally:
        traffic.stop()  # every call answered
    assert traffic.ok - killed_at > 50, "calls stopped after the kill"


def test_a_name_that_resolves_to_nothing_fails_fast_with_unavailable_naming_it(dns: DnsServer) -> None:
    with Client(dns.target("nobody.cluster.test", 8001), timeout=30) as nowhere:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as failed:
            nowhere.classify([np.zeros((4, 4, 3), np.uint8)])
        assert time.monotonic() - started < 5
    assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "nobody.cluster.test:8001" in str(failed.value.details())


def test_a_rollout_that_replaces_every_known_replica_costs_no_failed_call(tmp_path: Path) -> None:
    """As a Deployment's rolling update does: new replicas appear in DNS, the old ones drain (serving through
    their shutdown delay, then closing their connections). A default balanced client looks the name up again as
    the first old connection closes; with gRPC's own 30 s between look-ups (the client's default before), it
    kept only the old, drained replicas and every call failed until then (seen on the real node)."""
    name = "rollout-pods.vision.svc.cluster.test"
    with replica_set(tmp_path, "--shutdown-delay", "2", "--grpc-max-connection-age", "300") as pods, \
            DnsServer({name: []}) as dns:
        old = pods.start(2)
        dns.set(name, pods.hosts())
        with Client(dns.target(name, pods.port), timeout=10) as client:  # the defaults, as for_service has them
            traffic = BackgroundTraffic(lambda: classify(client, 1))
            try:
                time.sleep(1.0)  # resolved and connected to the old replicas
                pods.start(2)
                dns.set(name, [r.host for r in pods.live if r not in old])
                for replica in old:
                    os.kill(replica.pid, signal.SIGTERM)
                for replica in old:
                    replica.process.wait(30)
                rolled_at = traffic.ok
                time.sleep(2.0)
            finally:
                traffic.stop()  # every call answered
    assert traffic.ok - rolled_at > 20, "calls stopped after the rollout"
