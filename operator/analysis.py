"""A rollout's figures, read from Prometheus: per revision, from the runtimes' own metrics.

The runtime pods carry ``kubeinfer.io/revision``; the chart's PodMonitor (and any scrape config doing the same
relabeling) turns it into the label ``revision``, next to ``namespace`` and ``inferenceservice``. Server errors are
the codes a client did not cause (client errors such as INVALID_ARGUMENT never count against a revision). Health
and metadata calls are left out: a balancing client asks GetModelInfo every few seconds.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass

from kubeinfer.operator.rollout import Figures, Unmeasurable

# The runtime's kubeinfer.runtime.metrics.SERVER_ERROR_CODES (the operator's image has no runtime to import;
# tests/test_rollout.py checks they are the same).
SERVER_ERROR_CODES = ("INTERNAL", "UNKNOWN", "DATA_LOSS", "UNAVAILABLE", "DEADLINE_EXCEEDED", "UNIMPLEMENTED",
                      "RESOURCE_EXHAUSTED")
NOT_INFERENCE = "GetModelInfo|(http:)?(ServerLive|ServerReady|ModelReady|ServerMetadata|ModelMetadata)"
TIMEOUT_S = 5.0


@dataclass(frozen=True)
class PrometheusMeasure:
    """``rollout.Measure`` for one InferenceService, from the Prometheus at ``address``."""

    address: str
    namespace: str
    name: str

    def _selector(self, revision: str | None = None, extra: str = "") -> str:
        labels = [f'namespace="{self.namespace}"', f'inferenceservice="{self.name}"']
        if revision is not None:
            labels.append(f'revision="{revision}"')
        if extra:
            labels.append(extra)
        return "{" + ",".join(labels) + "}"

    def query(self, promql: str) -> list[tuple[Mapping[str, str], float]]:
        """An instant query's samples as (labels, value); Unmeasurable when Prometheus does not answer."""
        url = f"{self.address.rstrip('/')}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as reply:
                body = json.load(reply)
        except (OSError, ValueError) as exc:
            raise Unmeasurable(f"Prometheus at {self.address} did not answer ({exc})") from exc
        if body.get("status") != "success":
            raise Unmeasurable(f"Prometheus at {self.address} refused {promql!r}: {body.get('error')}")
        samples = []
        for item in body["data"]["result"]:
            value = float(item["value"][1])
            if value == value:  # NaN: no data (e.g. a quantile over no calls)
                samples.append((item.get("metric") or {}, value))
        return samples

    def _scalar(self, promql: str) -> float | None:
        samples = self.query(promql)
        return samples[0][1] if samples else None

    def effective(self, generation: int, replicas: int) -> bool:
        metric = "kubeinfer_traffic_generation" + self._selector()
        loaded = self._scalar(f"count({metric} >= {generation})") or 0
        older = self._scalar(f"count({metric} < {generation})") or 0
        return loaded >= replicas and older == 0

    def figures(self, stable: str, candidate: str, seconds: int) -> Figures:
        window = f"[{seconds}s]"
        inference = f'rpc!~"{NOT_INFERENCE}"'

        def calls(revision: str) -> float:
            return self._scalar(f"sum(increase(kubeinfer_requests_total{self._selector(revision, inference)}"
                                f"{window}))") or 0.0

        def p99(revision: str) -> float | None:
            buckets = f"kubeinfer_request_duration_seconds_bucket{self._selector(revision, inference)}"
            return self._scalar(f"histogram_quantile(0.99, sum by (le) (rate({buckets}{window})))")

        server_errors = self._selector(candidate, inference + ',code=~"' + "|".join(SERVER_ERROR_CODES) + '"')
        errors = {sample.get("code", "?"): value for sample, value in self.query(
            f"sum by (code) (increase(kubeinfer_requests_total{server_errors}{window}))") if value > 0}
        candidate_calls = calls(candidate)
        shadowed = self._selector(stable, 'result="compared"')
        compared = self._scalar(f"sum(increase(kubeinfer_shadow_requests_total{shadowed}{window}))") or 0.0
        agreement_sum = self._scalar(f"sum(increase(kubeinfer_shadow_agreement_total{self._selector(stable)}"
                                     f"{window}))")
        return Figures(
            candidate_requests=candidate_calls, stable_requests=calls(stable),
            error_rate=sum(errors.values()) / candidate_calls if candidate_calls else None,
            errors_by_code=errors, candidate_p99=p99(candidate), stable_p99=p99(stable), compared=compared,
            # both sums are extrapolated alike; their ratio may pass 1 by a hair
            agreement=min(1.0, (agreement_sum or 0.0) / compared) if compared else None)


@dataclass(frozen=True)
class NoPrometheus:
    """``rollout.Measure`` when neither spec.rollout.prometheus nor the operator's --prometheus-url names one."""

    def effective(self, generation: int, replicas: int) -> bool:
        raise Unmeasurable("no Prometheus to read the figures from: set spec.rollout.prometheus or the operator's "
                           "--prometheus-url")

    def figures(self, stable: str, candidate: str, seconds: int) -> Figures:
        return self.effective(0, 0)  # type: ignore[return-value]
