"""The tie rule for replicas given one --priority, on peering objects as kopf writes them (no cluster here; the
real thing is in tests/test_operator_failover.py)."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import pytest

from kubeinfer.operator import peering
from kubeinfer.operator.peering import Peer, PriorityTaken, TieBreak, new_identity, rivals, yields

T0 = datetime.datetime(2026, 12, 6, 13, 0, 0, tzinfo=datetime.UTC)


def keepalive(priority: int, seconds_ago: float = 0.0, lifetime: int = 10, now: datetime.datetime = T0) -> Any:
    return {"priority": priority, "lifetime": lifetime,
            "lastseen": (now - datetime.timedelta(seconds=seconds_ago)).isoformat()}


def test_identities_sort_by_start_time() -> None:
    first = new_identity(T0, "zeta-host", 99)
    later = new_identity(T0 + datetime.timedelta(milliseconds=1), "alpha-host", 1)
    assert first < later
    assert first.startswith("20261206T130000.000000Z/zeta-host/")


def test_rivals_are_the_live_others_of_the_same_priority() -> None:
    found = peering.peers({"status": {"me": keepalive(7), "twin": keepalive(7, 3), "dead": keepalive(7, 11),
                                      "higher": keepalive(8), "broken": {"priority": "x"}}})
    assert sorted(p.identity for p in found) == ["dead", "higher", "me", "twin"]
    assert [p.identity for p in rivals(found, "me", 7, T0)] == ["twin"]


def test_of_two_with_one_priority_the_later_yields() -> None:
    twin = [Peer("20261206T130000.000000Z/a/1", 7, 10, T0)]
    assert yields("20261206T130001.000000Z/b/2", twin)
    assert not yields("20261206T125959.000000Z/b/2", twin)
    assert not yields("x", [])


class Clock:
    """A peering object that changes as time passes: ``timeline`` maps seconds from T0 to its status."""

    def __init__(self, timeline: dict[float, dict[str, Any]]) -> None:
        self.seconds = 0.0
        self.timeline = timeline

    def now(self) -> datetime.datetime:
        return T0 + datetime.timedelta(seconds=self.seconds)

    def read(self, namespace: str | None) -> dict[str, Any]:
        assert namespace is None  # cluster-wide
        return {"status": self.timeline[max(t for t in self.timeline if t <= self.seconds)]}

    def sleep(self, seconds: float) -> None:
        self.seconds += seconds


def tie(clock: Clock, identity: str = "20261206T130005.000000Z/me/1") -> TieBreak:
    return TieBreak("p", [None], identity, 7, interval=2.5, read=clock.read, now=clock.now)


def test_a_live_replica_of_the_same_priority_refuses_the_start() -> None:
    # The twin writes a keep-alive every 3 s: seen to move, it is alive.
    clock = Clock({0: {"twin": keepalive(7, 1)}, 2: {"twin": keepalive(7, 0, now=T0 + datetime.timedelta(seconds=2))}})
    with pytest.raises(PriorityTaken, match="replica twin is alive with --priority 7 too"):
        tie(clock).check_at_start(clock.sleep)
    assert clock.seconds <= 3


def test_a_keep_alive_that_never_moves_is_waited_out() -> None:
    # A replica killed a second ago (maybe this one's previous run): its keep-alive lapses 9 s later.
    clock = Clock({0: {"ghost": keepalive(7, 1), "other": keepalive(3)}})
    tie(clock).check_at_start(clock.sleep)
    assert 9 <= clock.seconds <= 10


def test_no_rival_starts_at_once() -> None:
    clock = Clock({0: {"higher": keepalive(8), "lower": keepalive(6)}})
    tie(clock).check_at_start(clock.sleep)
    assert clock.seconds == 0


@pytest.mark.parametrize(("mine", "exits"), [("20261206T130005.000000Z/me/1", True),
                                             ("20261206T125900.000000Z/me/1", False)])
def test_while_running_only_the_replica_that_started_later_exits(mine: str, exits: bool) -> None:
    twin = "20261206T130001.000000Z/twin/2"
    clock = Clock({0: {mine: keepalive(7), twin: keepalive(7)}})
    breaker = tie(clock, mine)
    breaker.interval = 0.01
    stopped: list[bool] = []

    async def run() -> None:
        await asyncio.wait_for(breaker.watch(lambda: stopped.append(True)), 0.5)

    if exits:
        asyncio.run(run())
        assert stopped == [True]
        assert breaker.refusal is not None and "started later and exits" in breaker.refusal and twin in breaker.refusal
    else:
        with pytest.raises(TimeoutError):
            asyncio.run(run())
        assert stopped == [] and breaker.refusal is None


def test_namespaced_peering_objects_are_read_per_watched_namespace() -> None:
    assert peering.peering_namespaces([]) == [None]
    assert peering.peering_namespaces(["a", "team-*", "b"]) == ["a", "b"]
