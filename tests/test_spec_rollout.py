"""parse_spec on spec.rollout: the same table the API server is held to in tests/test_crd.py.

Good rollouts parse to the expected ``Rollout`` whether written by the user or stored by the API server with its
defaults; bad ones raise a ``SpecError`` whose message names the field, as the status and events will show it.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from rollout_spec_support import BAD, GOOD, Bad, Good

from kubeinfer.operator import spec as spec_module
from kubeinfer.operator.spec import SpecError, Step, parse_spec

DETECT = {"task": "detect", "model": {"uri": "/m.pt"}}


def with_rollout(rollout: Any) -> dict[str, Any]:
    return {**copy.deepcopy(DETECT), "rollout": copy.deepcopy(rollout)}


def test_a_spec_without_rollout_has_none() -> None:
    assert parse_spec(DETECT).rollout is None
    assert parse_spec(with_rollout(None)).rollout is None  # `rollout:` with nothing after it, in YAML


@pytest.mark.parametrize("good", GOOD, ids=[good.id for good in GOOD])
def test_every_good_rollout_parses_to_its_rollout(good: Good) -> None:
    assert parse_spec(with_rollout(good.rollout)).rollout == good.parsed
    assert parse_spec(with_rollout(good.stored)).rollout == good.parsed  # as the API server stores it


def test_the_defaults_are_the_designs() -> None:
    """`rollout: {}`: shadow 20 %, then weights 10, 50 and 100 %, a minute each, and the design's thresholds."""
    rollout = parse_spec(with_rollout({})).rollout
    assert rollout is not None
    assert [(s.kind, s.percent) for s in rollout.steps] == [("shadow", 20), ("weight", 10), ("weight", 50),
                                                            ("weight", 100)]
    assert (rollout.interval, rollout.prometheus, rollout.gateway) == (60, None, None)
    analysis = rollout.analysis
    assert (analysis.max_error_rate, analysis.max_latency_ratio, analysis.min_agreement, analysis.min_requests) == (
        0.01, 1.5, 0.9, 20)


def test_gateway_parent_refs_are_passed_through() -> None:
    refs = [{"name": "my-gateway", "namespace": "gw", "sectionName": "grpc"},
            {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "edge", "port": 8443}]
    rollout = parse_spec(with_rollout({"gateway": {"parentRefs": refs}})).rollout
    assert rollout is not None and rollout.gateway is not None
    assert list(rollout.gateway.parent_refs) == refs
    # A field Gateway API does not have is dropped, as the API server's pruning drops it.
    pruned = parse_spec(with_rollout({"gateway": {"parentRefs": [{"name": "g", "weight": 3}]}})).rollout
    assert pruned is not None and pruned.gateway is not None and pruned.gateway.parent_refs == ({"name": "g"},)


def test_the_rollout_is_immutable() -> None:
    rollout = parse_spec(with_rollout({})).rollout
    assert rollout is not None
    with pytest.raises(AttributeError):
        rollout.interval = 5  # type: ignore[misc]
    with pytest.raises(AttributeError):
        rollout.steps[0].percent = 50  # type: ignore[misc]
    assert isinstance(rollout.steps, tuple) and rollout.steps[0] == Step("shadow", 20)


@pytest.mark.parametrize("bad", BAD, ids=[bad.id for bad in BAD])
def test_every_bad_rollout_is_refused_naming_its_field(bad: Bad) -> None:
    with pytest.raises(SpecError) as refused:
        parse_spec(with_rollout(bad.rollout))
    message = str(refused.value)
    assert bad.operator in message, message
    assert message.startswith(bad.field), f"{message!r} does not start with the field {bad.field}"


def test_the_table_names_every_rule_the_design_lists() -> None:
    """The design's rules each have a bad case: 1..10 steps, one kind per step, shadows first, weights rising,
    interval 10..3600 and every threshold's range."""
    ids = {bad.id for bad in BAD}
    assert {"a step with both shadow and weight", "a step with neither", "shadow after weight", "weights 50 then 10",
            "weight 0", "weight 101", "interval 5", "maxLatencyRatio 0.5", "minAgreement 1.5", "11 steps",
            "no steps"} <= ids
    assert spec_module.MAX_STEPS == 10 and spec_module.STEP_KINDS == ("shadow", "weight")
