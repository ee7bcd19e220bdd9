"""Helpers for the chart, image and dashboard tests: the real tools, chart rendering, a real Prometheus.

The tools come from ``scripts/install-test-tools.sh``. Missing tools fail the tests under CI
(``CI=true``), where the script must have run, and skip them locally with the command to run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "kubeinfer"
FULL_VALUES = CHART / "ci" / "full-values.yaml"
DASHBOARDS = CHART / "dashboards"
INSTALL_HINT = "run scripts/install-test-tools.sh"
RELEASE = "kubeinfer"
NAMESPACE = "kubeinfer-system"


def require_tool(name: str, path: Path | None) -> Path:
    """The tool's path; under CI a missing tool fails the test, locally it skips it."""
    if path is not None and path.exists() and os.access(path, os.X_OK):
        return path
    missing(name)


def missing(name: str) -> NoReturn:
    message = f"{name} is not installed: {INSTALL_HINT}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


def helm_binary() -> Path:
    return require_tool("helm", REPO / ".cache" / "bin" / "helm")


def checkov_binary() -> Path:
    return require_tool("checkov", REPO / ".cache" / "checkov-venv" / "bin" / "checkov")


def prometheus_binary() -> Path:
    found = shutil.which("prometheus")
    return require_tool("prometheus", Path(found) if found else None)


def validate_monitoring_objects(objects: list[dict[str, Any]]) -> dict[str, str | None]:
    """Validate monitoring.coreos.com objects with the Prometheus Operator's CRD schemas (node + npm models).

    Returns "Kind/name" -> error message, or None when valid.
    """
    prefix = REPO / ".cache" / "node-validators"
    package = prefix / "node_modules" / "@kubernetes-models" / "prometheus-operator" / "package.json"
    node = shutil.which("node")
    if node is None or not package.exists():
        missing("node and @kubernetes-models/prometheus-operator")
    result = subprocess.run([str(node), str(REPO / "tests" / "chart_validate_monitoring.mjs"), str(prefix)],
                            input=json.dumps(objects), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"monitoring validator failed:\n{result.stderr}"
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == len(objects), result.stdout
    return {f"{line['kind']}/{line['name']}": line["error"] for line in lines}


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the real helm with a scratch home, so no user config or repository leaks in."""
    home = REPO / ".cache" / "helm-home"
    env = {**os.environ, "HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
           "HELM_DATA_HOME": str(home / "data"), "KUBECONFIG": str(home / "no-kubeconfig")}
    result = subprocess.run([str(helm_binary()), *args], capture_output=True, text=True, env=env, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def render(*extra: str, values: Path | None = None) -> list[dict[str, Any]]:
    """``helm template`` the chart (CRDs included) and return the objects."""
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--include-crds"]
    if values is not None:
        args += ["--values", str(values)]
    text = helm(*args, *extra).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in matches]}"
    return matches[0]


# --- dashboards -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref: str
    expr: str


def load_dashboard(name: str) -> dict[str, Any]:
    return json.loads((DASHBOARDS / name).read_text())


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def panel_queries(name: str) -> list[PanelQuery]:
    dashboard = load_dashboard(name)
    return [PanelQuery(name, p["title"], t["refId"], t["expr"])
            for p in panels(dashboard) for t in p.get("targets", [])]


def substitute(expr: str, variables: dict[str, str], rate_interval: str, interval: str) -> str:
    """Replace Grafana's variables the way Grafana does before it sends a query."""
    out = expr.replace("$__rate_interval", rate_interval).replace("$__interval", interval)
    out = out.replace("$__range", "1h")
    for name in sorted(variables, key=len, reverse=True):
        out = out.replace("${" + name + "}", variables[name]).replace("$" + name, variables[name])
    leftover = re.findall(r"\$\{?\w+", out)
    assert not leftover, f"unsubstituted variables {leftover} in {out}"
    return out


def grafana_regex_escape(value: str) -> str:
    """How Grafana's Prometheus data source puts a multi-value variable's value into ``=~"..."``:
    regex metacharacters get a backslash, itself escaped for the PromQL string (``.`` -> ``\\\\.``)."""
    return re.sub(r"([\\^$*+?.()|\[\]{}])", r"\\\\\1", value)


LABEL_VALUES = re.compile(r"^label_values\((?:(?P<match>.+),\s*)?(?P<label>\w+)\)$")


def parse_label_values(definition: str) -> tuple[str | None, str]:
    """``label_values(metric{...}, label)`` -> (series selector or None, label)."""
    found = LABEL_VALUES.match(definition.strip())
    assert found, f"not a label_values() query: {definition}"
    return found.group("match"), found.group("label")


# --- monitoring.coreos.com -> prometheus.yml --------------------------------------------------------------

RELABEL_FIELDS = {"sourceLabels": "source_labels", "separator": "separator", "targetLabel": "target_label",
                  "regex": "regex", "modulus": "modulus", "replacement": "replacement", "action": "action"}


def prometheus_relabel_configs(monitor: dict[str, Any]) -> list[dict[str, Any]]:
    """What the Prometheus Operator generates for a PodMonitor/ServiceMonitor endpoint, minus discovery.

    The ``keep`` rules select pods by the monitor's matchLabels and the endpoint by port name, on the
    ``__meta_kubernetes_*`` labels Kubernetes discovery sets; then the monitor's own relabelings follow.
    """
    spec = monitor["spec"]
    endpoints = spec.get("podMetricsEndpoints") or spec.get("endpoints")
    assert endpoints and len(endpoints) == 1, "one scrape endpoint expected"
    endpoint = endpoints[0]
    role = "pod" if monitor["kind"] == "PodMonitor" else "service"
    rules: list[dict[str, Any]] = []
    for key, value in spec["selector"]["matchLabels"].items():
        rules.append({"action": "keep", "source_labels": [f"__meta_kubernetes_{role}_label_{sanitize(key)}"],
                      "regex": re.escape(value)})
    port_label = "__meta_kubernetes_pod_container_port_name" if role == "pod" else \
        "__meta_kubernetes_endpoint_port_name"
    rules.append({"action": "keep", "source_labels": [port_label], "regex": re.escape(endpoint["port"])})
    for relabeling in endpoint.get("relabelings", []):
        rules.append({RELABEL_FIELDS[k]: v for k, v in relabeling.items()})
    return rules


def sanitize(label: str) -> str:
    """Kubernetes label key -> the Prometheus label name discovery uses."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", label)


class Prometheus:
    """A real Prometheus server on loopback with a generated configuration."""

    def __init__(self, workdir: Path, port: int, scrape_configs: list[dict[str, Any]],
                 scrape_interval: str = "1s", host: str = "127.0.0.1") -> None:
        self.workdir = workdir
        self.url = f"http://{host}:{port}"
        config = {"global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval,
                             "scrape_timeout": scrape_interval},
                  "scrape_configs": scrape_configs}
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = workdir / "prometheus.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [str(prometheus_binary()), f"--config.file={self.config_path}",
             f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address={host}:{port}",
             "--storage.tsdb.retention.time=1h", "--web.enable-lifecycle", "--log.level=warn"],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=workdir)

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.process.returncode}:\n{self.logs()}")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"prometheus not ready after {timeout}s:\n{self.logs()}")

    def api(self, path: str, **params: str | list[str]) -> Any:
        """GET /api/v1/<path>; returns ``data`` or raises with Prometheus's error."""
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise AssertionError(f"/api/v1/{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", f"{expr}: result type {data['resultType']}"
        return list(data["result"])

    def targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets", state="active")["activeTargets"])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
