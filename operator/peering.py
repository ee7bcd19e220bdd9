"""Several operator replicas, one at work: kopf's peering, and how long a standby waits for a killed replica.

kopf's peering object (a ClusterKopfPeering NAME, or a KopfPeering NAME in each watched namespace) holds one
keep-alive per replica: its priority, its lifetime and when it last wrote. The live replica with the highest
priority works; the others pause. A replica that stops cleanly removes its keep-alive at once, and a standby resumes
at once. A replica that is killed stays "alive" until its last keep-alive is ``lifetime`` seconds old: that is how
long the standby waits before taking over. kopf's default is 60 s; the operator's is DEFAULT_LIFETIME, and kopf then
writes a keep-alive every 1 to 5 s (its lifetime less 5 to 10 s, at least 1 s), so a standby takes over within
10 s of the active replica being killed.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kubeinfer.operator.kube import Kube

DEFAULT_LIFETIME = 10  # seconds
MIN_LIFETIME = 2  # kopf writes a keep-alive every second at most: a shorter lifetime would let a live replica lapse
LIFETIME_VARIABLE = "KUBEINFER_OPERATOR_PEERING_LIFETIME"

log = logging.getLogger(__name__)


def lifetime(text: str) -> int:
    """A --peering-lifetime value: whole seconds, at least MIN_LIFETIME."""
    try:
        seconds = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of seconds: {text!r}") from None
    if seconds < MIN_LIFETIME:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_LIFETIME} seconds, got {seconds}")
    return seconds


def lifetime_from_environment() -> int:
    """Under a bare `kopf run` (no memo from `kubeinfer operator`): KUBEINFER_OPERATOR_PEERING_LIFETIME."""
    raw = os.environ.get(LIFETIME_VARIABLE)
    return lifetime(raw) if raw else DEFAULT_LIFETIME


# -- equal priorities -------------------------------------------------------------------------------------------
# kopf pauses every replica that sees a live peer of its own priority, itself included, and none resumes while both
# live: two replicas given the same --priority would both stand by forever. The operator does not let that happen:
# a replica refuses to start while a live peer holds its priority (``check_at_start``), and two that started
# together are told apart while they run (``TieBreak``): the one that started later exits, so exactly one works.
PEERING_API_VERSION = "kopf.dev/v1"
NAMESPACE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
Read = Callable[[str | None], Mapping[str, Any] | None]  # namespace (None: cluster-wide) -> the peering object


class PriorityTaken(Exception):
    """A live peer has this replica's priority: the replica must not (keep) run(ning)."""


@dataclass(frozen=True)
class Peer:
    """One replica's keep-alive, as kopf writes it into the peering object's status."""

    identity: str
    priority: int
    lifetime: float
    lastseen: datetime.datetime

    def alive(self, now: datetime.datetime) -> bool:
        return self.lastseen + datetime.timedelta(seconds=self.lifetime) > now


def new_identity(started: datetime.datetime, host: str, pid: int) -> str:
    """The replica's kopf identity: its start time first, so identities sort by start (the tie rule's order)."""
    return f"{started.astimezone(datetime.UTC):%Y%m%dT%H%M%S.%fZ}/{host}/{pid}"


def peering_namespaces(namespaces: Sequence[str]) -> list[str | None]:
    """Where kopf keeps the keep-alives: the ClusterKopfPeering (None), or the KopfPeering of each watched namespace
    (namespace patterns such as `team-*` are left out: which namespaces they match is not known here)."""
    return [ns for ns in namespaces if NAMESPACE_NAME.fullmatch(ns)] if namespaces else [None]


def reader(kube: Kube, name: str) -> Read:
    """Reads the peering object NAME cluster-wide or in a namespace; None where it does not exist."""
    def read(namespace: str | None) -> Mapping[str, Any] | None:
        kind = "KopfPeering" if namespace else "ClusterKopfPeering"
        return kube.get(PEERING_API_VERSION, kind, namespace, name)

    return read


def peers(peering: Mapping[str, Any]) -> list[Peer]:
    """The keep-alives of a peering object (entries kopf could not have written are skipped)."""
    found = []
    for identity, entry in (peering.get("status") or {}).items():
        try:
            found.append(Peer(str(identity), int(entry["priority"]), float(entry.get("lifetime", 60)),
                              datetime.datetime.fromisoformat(str(entry["lastseen"]))))
        except (KeyError, TypeError, ValueError):
            continue
    return found


def rivals(found: Sequence[Peer], identity: str, priority: int, now: datetime.datetime) -> list[Peer]:
    """The live peers other than this replica with its priority."""
    return [peer for peer in found if peer.identity != identity and peer.priority == priority and peer.alive(now)]


def yields(identity: str, rival: Sequence[Peer]) -> bool:
    """The tie rule: of replicas with one priority, the one that started first works; every other one yields."""
    return any(peer.identity < identity for peer in rival)


def describe(peering: str, priority: int, rival: Sequence[Peer]) -> str:
    names = ", ".join(sorted(peer.identity for peer in rival))
    return (f"peering {peering}: replica {names} is alive with --priority {priority} too. kopf pauses every replica "
            "that sees a live peer of its own priority, so neither would work: give each replica its own --priority, "
            "or leave --priority unset for a random one")


class TieBreak:
    """Reads the peering objects every ``interval`` seconds; ``refusal`` says why this replica has to go."""

    def __init__(self, peering: str, namespaces: Sequence[str | None], identity: str, priority: int,
                 interval: float, read: Read,
                 now: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC)) -> None:
        self.peering, self.namespaces, self.identity, self.priority = peering, list(namespaces), identity, priority
        self.interval, self._read, self._now = interval, read, now
        self.refusal: str | None = None

    def _rivals(self) -> list[Peer]:
        found: list[Peer] = []
        for namespace in self.namespaces:
            peering = self._read(namespace)
            if peering is not None:
                found += peers(peering)
        return rivals(found, self.identity, self.priority, self._now())

    def check_at_start(self, sleep: Callable[[float], None] = time.sleep) -> None:
        """Before joining: raise PriorityTaken while a live peer holds this priority. A peer whose keep-alive does
        not move before it lapses (a replica killed a moment ago, maybe this one's previous run) is no rival."""
        first = {peer.identity: peer.lastseen for peer in self._rivals()}
        while first:
            current = {peer.identity: peer for peer in self._rivals()}
            renewed = [peer for identity, peer in current.items()
                       if identity in first and peer.lastseen != first[identity]]
            if renewed or any(identity not in first for identity in current):
                raise PriorityTaken(describe(self.peering, self.priority, list(current.values())) +
                                    "; this replica does not start")
            if not current:
                return
            sleep(1.0)

    async def watch(self, stop: Callable[[], None]) -> None:
        """While running: when a rival started first, set ``refusal`` and call ``stop`` (the operator then exits)."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                rival = await asyncio.to_thread(self._rivals)
            except Exception as exc:  # a failed read must not stop the operator: the next one may succeed
                log.warning("peering %s: keep-alives not read (%s)", self.peering, exc)
                continue
            if rival and yields(self.identity, rival):
                self.refusal = (describe(self.peering, self.priority, rival) +
                                "; this replica started later and exits, the other one works")
                log.error("%s", self.refusal)
                stop()
                return
