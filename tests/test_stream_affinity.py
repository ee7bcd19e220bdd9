"""Stream affinity: resumable stream windows kept by id across calls, rendezvous routing of ids to replicas,
and what a stream sees when a replica is added (moved ids restart their window, the others continue exactly).

The routing part runs three (then four) real runtimes on 127.0.0.2.. behind a name the test's DNS server
answers; the hashing and the registry are also checked alone.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from classify_support import expected_probabilities, scores, solid
from dns_support import DnsServer
from replica_support import REPLICAS_NAME, WINDOW, ReplicaSet, replica_set

from kubeinfer.clients import Client, NoEndpoints, StreamRouter
from kubeinfer.clients.affinity import owner
from kubeinfer.clients.resolve import resolve
from kubeinfer.clients.types import StreamPrediction
from kubeinfer.runtime.tasks.stream import StreamRegistry

# A fixed port (below the ephemeral range, so no other test's free port), so the endpoints and with them the
# hash's split are known: 98/98/104 of the ids over three replicas, 67 moved by a fourth. Any port gives a split
# within the bounds asserted below nearly always (binomial, 3 standard deviations); this one always.
PORT = 28001
STREAMS = [f"camera-{i:03d}" for i in range(300)]
RED, BLUE = solid("red", 16, 16), solid("blue", 16, 16)

# ---------------------------------------------------------------- rendezvous hashing alone


def test_rendezvous_spreads_ids_evenly_and_adding_an_endpoint_moves_about_a_quarter_all_to_it() -> None:
    three = ["10.0.0.1:8001", "10.0.0.2:8001", "10.0.0.3:8001"]
    four = [*three, "10.0.0.4:8001"]
    keys = [f"stream-{i}" for i in range(3000)]
    before = {k: owner(k, three) for k in keys}
    assert all(900 <= n <= 1100 for n in Counter(before.values()).values()), Counter(before.values())
    after = {k: owner(k, list(reversed(four))) for k in keys}  # the order of the endpoints does not matter
    moved = [k for k in keys if before[k] != after[k]]
    assert 0.20 <= len(moved) / len(keys) <= 0.30
    assert {after[k] for k in moved} == {"10.0.0.4:8001"}
    gone = {k: owner(k, three[1:]) for k in keys}  # 10.0.0.1 leaves: only its ids move
    assert [k for k in keys if gone[k] != before[k]] == [k for k in keys if before[k] == "10.0.0.1:8001"]


def test_rendezvous_with_no_endpoint_is_refused() -> None:
    with pytest.raises(ValueError, match="no endpoint"):
        owner("stream", [])


def test_targets_resolve_to_their_endpoints() -> None:
    assert resolve("ipv4:127.0.0.3:80,127.0.0.2:80") == ["127.0.0.2:80", "127.0.0.3:80"]
    assert resolve("ipv6:[::1]:8001") == ["[::1]:8001"]
    with DnsServer({"a.test": ["127.0.0.9", "127.0.0.8"]}) as dns:
        assert resolve(dns.target("a.test", 8001)) == ["127.0.0.8:8001", "127.0.0.9:8001"]
        assert resolve(dns.target("missing.test", 8001)) == []
        with pytest.raises(NoEndpoints, match=r"missing\.test:8001 resolves to no address"):
            StreamRouter(dns.target("missing.test", 8001))


# ---------------------------------------------------------------- the registry alone


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_resumable_window_outlives_its_call_until_idle_and_is_then_opened_afresh() -> None:
    clock = Clock()
    streams = StreamRegistry(window=2, max_streams=10, idle_seconds=10.0, clock=clock)
    call = streams.open_call()
    window, opened = streams.resume("cam")
    per_call = streams.admit(call, "cam")  # the same id without resume is the call's own stream
    assert opened and per_call is not window
    streams.close_call(call)
    assert len(streams) == 1
    clock.now += 9
    assert streams.resume("cam") == (window, False)  # another call continues it
    clock.now += 10.5
    assert streams.evict_idle() == 1
    fresh, opened = streams.resume("cam")
    assert opened and fresh is not window


# ---------------------------------------------------------------- replicas


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicaSet]:
    with replica_set(tmp_path_factory.mktemp("affinity"), "--max-streams", "1000",
                     "--stream-idle-seconds", "600", port=PORT) as started:
        started.start(3)
        yield started


@pytest.fixture(scope="module")
def router(dns: DnsServer, replicas: ReplicaSet) -> Iterator[StreamRouter]:
    with StreamRouter(dns.target(REPLICAS_NAME, replicas.port), timeout=30) as routed:
        yield routed


def send(router: StreamRouter, stream_id: str, frames: list[np.ndarray]) -> list[StreamPrediction]:
    predictions = list(router.stream_classify(frames, stream_id=stream_id, timeout=30))
    assert [p.error for p in predictions] == [None] * len(frames)
    return predictions


def held(router: StreamRouter) -> dict[str, int]:
    return {e: info.active_streams for e, info in router.model_infos(timeout=10).items()}


def test_stream_ids_are_spread_over_three_replicas_and_a_fourth_moves_only_its_share(
        router: StreamRouter, replicas: ReplicaSet, dns: DnsServer) -> None:
    assert len(router.endpoints) == 3
    owners = {s: router.owner(s) for s in STREAMS}
    for stream in STREAMS:
        first = send(router, stream, [RED, RED])
        assert first[0].window_restarted and not first[1].window_restarted  # a new id: its window starts here
    windows = held(router)
    assert sum(windows.values()) == len(STREAMS)
    assert all(75 <= n <= 125 for n in windows.values()), windows
    assert windows == dict(Counter(owners.values()))  # each id is held where the hash sends it

    (fourth,) = replicas.start(1)
    dns.set(REPLICAS_NAME, replicas.hosts())
    assert len(router.refresh()) == 4
    new_owners = {s: router.owner(s) for s in STREAMS}
    moved = {s for s in STREAMS if new_owners[s] != owners[s]}
    print(f"streams held by the three replicas: {windows}; moved to the fourth: {len(moved)} of {len(STREAMS)}")
    assert 0 < len(moved) <= 0.35 * len(STREAMS)
    assert {new_owners[s] for s in moved} == {fourth.grpc_target}

    continued_mean = np.mean([expected_probabilities(f) for f in (RED, RED, BLUE)], axis=0)
    for stream in STREAMS:
        (next_frame,) = send(router, stream, [BLUE])
        if stream in moved:  # a new owner: the window restarts from this frame
            assert (next_frame.window_restarted, next_frame.window_fill) == (True, 1), stream
            assert next_frame.averaged is not None and next_frame.averaged.label == "blue"
        else:  # the same replica: the window of the earlier call goes on, exactly
            assert (next_frame.window_restarted, next_frame.window_fill) == (False, 3), stream
            assert next_frame.averaged is not None and next_frame.averaged.label == "red"
            np.testing.assert_allclose(scores(next_frame.averaged), continued_mean, atol=1e-5)
    assert held(router)[fourth.grpc_target] == len(moved)


def test_two_clients_sharing_a_resumable_id_share_its_window_and_other_ids_never_mix(
        router: StreamRouter, dns: DnsServer, replicas: ReplicaSet) -> None:
    with StreamRouter(dns.target(REPLICAS_NAME, replicas.port), timeout=30) as other:
        assert other.owner("shared-camera") == router.owner("shared-camera")
        send(router, "shared-camera", [RED] * WINDOW)
        (joined,) = send(other, "shared-camera", [BLUE])
        assert (joined.window_restarted, joined.window_fill, joined.averaged and joined.averaged.label) == (
            False, WINDOW, "red")
        (alone,) = send(other, "other-camera", [BLUE])
        assert (alone.window_restarted, alone.window_fill) == (True, 1)

    # without resume the same id in two calls is two streams, even on one replica
    with Client(router.owner("shared-camera"), timeout=30) as direct:
        (per_call,) = list(direct.stream_classify([BLUE], stream_id="shared-camera"))
    assert (per_call.window_restarted, per_call.window_fill) == (False, 1)


def test_when_a_streams_replica_dies_its_next_call_goes_to_the_next_owner_and_restarts(
        router: StreamRouter, dns: DnsServer, replicas: ReplicaSet) -> None:
    victim = replicas.live[0]
    owners = {s: router.owner(s) for s in STREAMS}
    lost = next(s for s in STREAMS if owners[s] == victim.grpc_target)
    kept = next(s for s in STREAMS if owners[s] not in (victim.grpc_target, replicas.live[-1].grpc_target))
    os.kill(victim.pid, signal.SIGKILL)
    victim.process.wait(10)
    time.sleep(0.5)

    # the name still lists the dead replica (its endpoint not yet removed): the call fails, the router learns
    with pytest.raises(grpc.RpcError) as failed:
        send(router, lost, [BLUE])
    assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
    assert router.owner(lost) != victim.grpc_target
    (again,) = send(router, lost, [BLUE])
    assert (again.window_restarted, again.window_fill) == (True, 1)
    (other,) = send(router, kept, [BLUE])  # a stream of a live replica goes on: R, R, B, B
    assert (other.window_restarted, other.window_fill) == (False, 4)

    set_aside = {s: router.owner(s) for s in STREAMS}
    dns.set(REPLICAS_NAME, replicas.hosts())  # the dead replica's address is gone from the name
    router.refresh()
    assert victim.grpc_target not in router.endpoints
    assert {s: router.owner(s) for s in STREAMS} == set_aside  # the fallback was the owner-to-be already
    assert all(set_aside[s] == owners[s] for s in STREAMS if owners[s] != victim.grpc_target)
