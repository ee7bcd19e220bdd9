"""spec.rollout as a table both judges read: the API server (tests/test_crd.py) and parse_spec (test_spec_rollout.py).

Each good rollout comes with the ``Rollout`` the operator must make of it; each bad one with the field the API server
names, a piece of its message, and a piece of the operator's ``SpecError`` message, which names the same field. One
table, so the CRD and the operator cannot drift apart on issue #34's spec.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from kubeinfer.operator.spec import Analysis, Gateway, Rollout, Step

GE, LE = "should be greater than or equal to", "should be less than or equal to"
DEFAULT_STEPS_JSON = [{"shadow": 20}, {"weight": 10}, {"weight": 50}, {"weight": 100}]
DEFAULT_ANALYSIS_JSON = {"maxErrorRate": 0.01, "maxLatencyRatio": 1.5, "minAgreement": 0.9, "minRequests": 20}
PARENT = {"name": "my-gateway", "namespace": "gw", "sectionName": "grpc"}


class Good(NamedTuple):
    id: str
    rollout: dict[str, Any]  # spec.rollout as the user writes it
    stored: dict[str, Any]  # spec.rollout as the API server stores it, defaults applied
    parsed: Rollout  # what parse_spec makes of either


class Bad(NamedTuple):
    id: str
    rollout: Any
    field: str  # the field the API server's cause names
    server: str  # a piece of the API server's message
    operator: str  # a piece of parse_spec's SpecError message (which names the field too)
    keyword: str  # the schema keyword, or rule:NAME for a CEL rule


GOOD: list[Good] = [
    Good("defaults", {}, {"steps": DEFAULT_STEPS_JSON, "interval": 60, "analysis": DEFAULT_ANALYSIS_JSON},
         Rollout(steps=(Step("shadow", 20), Step("weight", 10), Step("weight", 50), Step("weight", 100)), interval=60,
                 prometheus=None, analysis=Analysis(0.01, 1.5, 0.9, 20), gateway=None)),
    Good("every field",
         {"steps": [{"shadow": 5}, {"shadow": 50}, {"weight": 1}, {"weight": 100}], "interval": 3600,
          "prometheus": "https://prometheus.monitoring:9090/prom",
          "analysis": {"maxErrorRate": 1, "maxLatencyRatio": 1, "minAgreement": 0, "minRequests": 1},
          "gateway": {"parentRefs": [PARENT, {"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                              "name": "edge", "port": 443}]}},
         {"steps": [{"shadow": 5}, {"shadow": 50}, {"weight": 1}, {"weight": 100}], "interval": 3600,
          "prometheus": "https://prometheus.monitoring:9090/prom",
          "analysis": {"maxErrorRate": 1, "maxLatencyRatio": 1, "minAgreement": 0, "minRequests": 1},
          "gateway": {"parentRefs": [PARENT, {"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                              "name": "edge", "port": 443}]}},
         Rollout(steps=(Step("shadow", 5), Step("shadow", 50), Step("weight", 1), Step("weight", 100)), interval=3600,
                 prometheus="https://prometheus.monitoring:9090/prom", analysis=Analysis(1.0, 1.0, 0.0, 1),
                 gateway=Gateway(({"name": "my-gateway", "namespace": "gw", "sectionName": "grpc"},
                                  {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "edge",
                                   "port": 443})))),
    Good("some analysis, the rest defaulted", {"steps": [{"weight": 100}], "interval": 10,
                                               "analysis": {"maxLatencyRatio": 3, "minRequests": 500}},
         {"steps": [{"weight": 100}], "interval": 10, "analysis": {**DEFAULT_ANALYSIS_JSON, "maxLatencyRatio": 3,
                                                                   "minRequests": 500}},
         Rollout(steps=(Step("weight", 100),), interval=10, analysis=Analysis(0.01, 3.0, 0.9, 500))),
    Good("shadow only, ten steps", {"steps": [{"shadow": 10 * i} for i in range(1, 11)]},
         {"steps": [{"shadow": 10 * i} for i in range(1, 11)], "interval": 60, "analysis": DEFAULT_ANALYSIS_JSON},
         Rollout(steps=tuple(Step("shadow", 10 * i) for i in range(1, 11)))),
    Good("weights rising after shadows", {"steps": [{"shadow": 100}, {"weight": 10}, {"weight": 11},
                                                    {"weight": 99}]},
         {"steps": [{"shadow": 100}, {"weight": 10}, {"weight": 11}, {"weight": 99}], "interval": 60,
          "analysis": DEFAULT_ANALYSIS_JSON},
         Rollout(steps=(Step("shadow", 100), Step("weight", 10), Step("weight", 11), Step("weight", 99)))),
]

STEPS = "spec.rollout.steps"
PARENT0 = "spec.rollout.gateway.parentRefs[0]"
BAD: list[Bad] = [
    # The step rules: CEL, each naming the step by its index.
    Bad("a step with both shadow and weight", {"steps": [{"shadow": 20}, {"shadow": 30, "weight": 10}]},
        f"{STEPS}[1]", "a step needs exactly one of shadow and weight",
        f"{STEPS}[1] needs exactly one of shadow and weight", "rule:step-kind"),
    Bad("a step with neither", {"steps": [{"shadow": 5}, {}, {"weight": 10}]}, f"{STEPS}[1]",
        "a step needs exactly one of shadow and weight", f"{STEPS}[1] needs exactly one of shadow and weight",
        "rule:step-kind"),
    Bad("shadow after weight", {"steps": [{"shadow": 20}, {"weight": 10}, {"shadow": 30}]}, STEPS,
        f"{STEPS}[2]: a shadow step must come before every weight step",
        f"{STEPS}[2]: a shadow step must come before every weight step", "rule:shadow-first"),
    Bad("weights 50 then 10", {"steps": [{"weight": 50}, {"weight": 10}]}, STEPS,
        f"{STEPS}[1]: each weight must be greater than the weight before it",
        f"{STEPS}[1]: weight 10 must be greater than the step before's 50", "rule:weights-rise"),
    Bad("a weight twice", {"steps": [{"shadow": 10}, {"weight": 20}, {"weight": 50}, {"weight": 50}]}, STEPS,
        f"{STEPS}[3]: each weight must be greater than the weight before it",
        f"{STEPS}[3]: weight 50 must be greater than the step before's 50", "rule:weights-rise"),
    # Bounds.
    Bad("weight 0", {"steps": [{"weight": 0}]}, f"{STEPS}[0].weight", f"{GE} 1",
        f"{STEPS}[0].weight must be in 1..100, got 0", "minimum"),
    Bad("weight 101", {"steps": [{"weight": 101}]}, f"{STEPS}[0].weight", f"{LE} 100",
        f"{STEPS}[0].weight must be in 1..100, got 101", "maximum"),
    Bad("shadow 0", {"steps": [{"shadow": 0}]}, f"{STEPS}[0].shadow", f"{GE} 1",
        f"{STEPS}[0].shadow must be in 1..100, got 0", "minimum"),
    Bad("shadow 101", {"steps": [{"shadow": 101}]}, f"{STEPS}[0].shadow", f"{LE} 100",
        f"{STEPS}[0].shadow must be in 1..100, got 101", "maximum"),
    Bad("a weight not an integer", {"steps": [{"weight": 12.5}]}, f"{STEPS}[0].weight", "must be of type integer",
        f"{STEPS}[0].weight must be an integer", "type"),
    Bad("no steps", {"steps": []}, STEPS, "should have at least 1 items", f"{STEPS} needs 1 to 10 steps, got 0",
        "minItems"),
    Bad("11 steps", {"steps": [{"weight": i} for i in range(1, 12)]}, STEPS, "must have at most 10 items",
        f"{STEPS} needs 1 to 10 steps, got 11", "maxItems"),
    Bad("interval 5", {"interval": 5}, "spec.rollout.interval", f"{GE} 10",
        "spec.rollout.interval must be in 10..3600, got 5", "minimum"),
    Bad("interval 3601", {"interval": 3601}, "spec.rollout.interval", f"{LE} 3600",
        "spec.rollout.interval must be in 10..3600, got 3601", "maximum"),
    Bad("maxLatencyRatio 0.5", {"analysis": {"maxLatencyRatio": 0.5}}, "spec.rollout.analysis.maxLatencyRatio",
        f"{GE} 1", "spec.rollout.analysis.maxLatencyRatio must be at least 1.0, got 0.5", "minimum"),
    Bad("minAgreement 1.5", {"analysis": {"minAgreement": 1.5}}, "spec.rollout.analysis.minAgreement", f"{LE} 1",
        "spec.rollout.analysis.minAgreement must be in [0.0, 1.0], got 1.5", "maximum"),
    Bad("minAgreement below 0", {"analysis": {"minAgreement": -0.1}}, "spec.rollout.analysis.minAgreement",
        f"{GE} 0", "spec.rollout.analysis.minAgreement must be in [0.0, 1.0], got -0.1", "minimum"),
    Bad("maxErrorRate below 0", {"analysis": {"maxErrorRate": -0.01}}, "spec.rollout.analysis.maxErrorRate",
        f"{GE} 0", "spec.rollout.analysis.maxErrorRate must be in [0.0, 1.0], got -0.01", "minimum"),
    Bad("maxErrorRate above 1", {"analysis": {"maxErrorRate": 2}}, "spec.rollout.analysis.maxErrorRate", f"{LE} 1",
        "spec.rollout.analysis.maxErrorRate must be in [0.0, 1.0], got 2", "maximum"),
    Bad("minRequests 0", {"analysis": {"minRequests": 0}}, "spec.rollout.analysis.minRequests", f"{GE} 1",
        "spec.rollout.analysis.minRequests must be at least 1, got 0", "minimum"),
    Bad("prometheus not a URL", {"prometheus": "prometheus:9090"}, "spec.rollout.prometheus",
        "should match '^https?://", "spec.rollout.prometheus: 'prometheus:9090' is not an http(s):// URL", "pattern"),
    # The gateway: Gateway API ParentReferences, checked as Gateway API checks them.
    Bad("a gateway without parents", {"gateway": {}}, "spec.rollout.gateway.parentRefs", "Required value",
        "spec.rollout.gateway.parentRefs needs 1 to 32 parents when gateway is set, got 0", "required"),
    Bad("no parents", {"gateway": {"parentRefs": []}}, "spec.rollout.gateway.parentRefs",
        "should have at least 1 items", "spec.rollout.gateway.parentRefs needs 1 to 32 parents", "minItems"),
    Bad("33 parents", {"gateway": {"parentRefs": [{"name": f"g{i}"} for i in range(33)]}},
        "spec.rollout.gateway.parentRefs", "must have at most 32 items",
        "spec.rollout.gateway.parentRefs needs 1 to 32 parents when gateway is set, got 33", "maxItems"),
    Bad("a parent without a name", {"gateway": {"parentRefs": [{"namespace": "gw"}]}}, f"{PARENT0}.name",
        "Required value", f"{PARENT0}.name is required", "required"),
    Bad("an empty parent name", {"gateway": {"parentRefs": [{"name": ""}]}}, f"{PARENT0}.name",
        "should be at least 1 chars long", f"{PARENT0}.name: '' is not a Gateway API name", "minLength"),
    Bad("a parent name too long", {"gateway": {"parentRefs": [{"name": "g" * 254}]}}, f"{PARENT0}.name",
        "may not be more than 253 bytes", f"{PARENT0}.name: '{'g' * 254}' is not a Gateway API name", "maxLength"),
    Bad("a parent namespace not a label", {"gateway": {"parentRefs": [{"name": "g", "namespace": "GW"}]}},
        f"{PARENT0}.namespace", "should match '^[a-z0-9]", f"{PARENT0}.namespace: 'GW' is not a Gateway API namespace",
        "pattern"),
    Bad("a parent namespace too long", {"gateway": {"parentRefs": [{"name": "g", "namespace": "n" * 64}]}},
        f"{PARENT0}.namespace", "may not be more than 63 bytes", f"{PARENT0}.namespace: '{'n' * 64}' is not",
        "maxLength"),
    Bad("a section name with capitals", {"gateway": {"parentRefs": [{"name": "g", "sectionName": "GRPC"}]}},
        f"{PARENT0}.sectionName", "should match '^[a-z0-9]", f"{PARENT0}.sectionName: 'GRPC' is not", "pattern"),
    Bad("a section name too long", {"gateway": {"parentRefs": [{"name": "g", "sectionName": "s" * 254}]}},
        f"{PARENT0}.sectionName", "may not be more than 253 bytes", f"{PARENT0}.sectionName: '{'s' * 254}' is not",
        "maxLength"),
    Bad("a parent group not a domain", {"gateway": {"parentRefs": [{"name": "g", "group": "Gateway_API"}]}},
        f"{PARENT0}.group", "should match '^$|^[a-z0-9]", f"{PARENT0}.group: 'Gateway_API' is not", "pattern"),
    Bad("a parent group too long", {"gateway": {"parentRefs": [{"name": "g", "group": "a" * 254}]}},
        f"{PARENT0}.group", "may not be more than 253 bytes", f"{PARENT0}.group: '{'a' * 254}' is not", "maxLength"),
    Bad("a parent kind starting with a digit", {"gateway": {"parentRefs": [{"name": "g", "kind": "1Gateway"}]}},
        f"{PARENT0}.kind", "should match '^[a-zA-Z]", f"{PARENT0}.kind: '1Gateway' is not a Gateway API kind",
        "pattern"),
    Bad("a parent kind too long", {"gateway": {"parentRefs": [{"name": "g", "kind": "K" * 64}]}}, f"{PARENT0}.kind",
        "may not be more than 63 bytes", f"{PARENT0}.kind: '{'K' * 64}' is not", "maxLength"),
    Bad("a parent port 0", {"gateway": {"parentRefs": [{"name": "g", "port": 0}]}}, f"{PARENT0}.port", f"{GE} 1",
        f"{PARENT0}.port must be an integer in 1..65535, got 0", "minimum"),
    Bad("a parent port 65536", {"gateway": {"parentRefs": [{"name": "g", "port": 65536}]}}, f"{PARENT0}.port",
        f"{LE} 65535", f"{PARENT0}.port must be an integer in 1..65535, got 65536", "maximum"),
]
# Refused by the API server only: parse_spec does not bound the text's length (as for autoscaling's address).
SERVER_ONLY: list[Bad] = [
    Bad("prometheus too long", {"prometheus": "http://p/" + "a" * 2048}, "spec.rollout.prometheus",
        "may not be more than 2048 bytes", "", "maxLength"),
]
