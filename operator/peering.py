"""Several operator replicas, one at work: kopf's peering, and how long a standby waits for a killed replica.

kopf's peering object (a ClusterKopfPeering NAME, or a KopfPeering NAME in each watched namespace) holds one
keep-alive per replica: its priority, its lifetime and when it last wrote. The live replica with the highest
priority works; the others pause. A replica that stops cleanly removes its keep-alive at once, and a standby resumes
at once. A replica that is killed stays "alive" until its last keep-alive is ``lifetime`` seconds old: that is how
long the standby waits before taking over. kopf's default is 60 s; the operator's is DEFAULT_LIFETIME, and kopf then
writes a keep-alive every 1 to 5 s (its lifetime less 5 to 10 s, at least 1 s), so a standby takes over 5 to 10 s
after the active replica was killed.
"""

from __future__ import annotations

import argparse
import os

DEFAULT_LIFETIME = 10  # seconds
MIN_LIFETIME = 2  # kopf writes a keep-alive every second at most: a shorter lifetime would let a live replica lapse
LIFETIME_VARIABLE = "KUBEINFER_OPERATOR_PEERING_LIFETIME"


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
