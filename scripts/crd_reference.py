"""The InferenceService reference, generated from the CRD's own schema so it cannot drift from what the API server
enforces: every field with its type, default, bounds and description, every validation rule with its message, the
printer columns and the status.

    python scripts/crd_reference.py [CRD] > reference.md

docs/hooks.py calls ``reference()`` when the documentation is built (make docs).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

CRD = Path(__file__).resolve().parents[1] / "crds" / "inferenceservices.kubeinfer.io.yaml"
BOUNDS = (("minimum", ">= {}"), ("maximum", "<= {}"), ("minLength", "length >= {}"), ("maxLength", "length <= {}"),
          ("minItems", ">= {} items"), ("maxItems", "<= {} items"), ("pattern", "matches `{}`"))


def fields(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any], bool]]:
    """(dotted path, schema node, required) for every property under ``schema``, depth first in file order."""
    required = set(schema.get("required") or [])
    for name, node in (schema.get("properties") or {}).items():
        here = f"{path}.{name}" if path else name
        yield here, node, name in required
        yield from fields(node, here)
        if node.get("type") == "array" and isinstance(node.get("items"), dict):
            yield from fields(node["items"], f"{here}[]")
        if isinstance(node.get("additionalProperties"), dict):
            yield from fields(node["additionalProperties"], f"{here}.*")


def _type(node: dict[str, Any]) -> str:
    kind = node.get("type") or ("int or string" if node.get("x-kubernetes-int-or-string") else "any")
    if kind == "array":
        kind = f"array of {(node.get('items') or {}).get('type', 'any')}"
    if node.get("x-kubernetes-preserve-unknown-fields") and kind == "object":
        kind = "object (free-form)"
    return kind


def _constraints(node: dict[str, Any], required: bool) -> str:
    parts = ["required"] if required else []
    if "enum" in node:
        parts.append("one of " + ", ".join(f"`{v}`" for v in node["enum"]))
    parts += [text.format(node[key]) for key, text in BOUNDS if key in node]
    return "; ".join(parts)


def _value(value: Any) -> str:
    """A default as the YAML or JSON of a spec writes it (a list of objects as JSON, not as Python's repr)."""
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


def _cell(text: Any) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _table(schema: dict[str, Any], prefix: str) -> list[str]:
    lines = ["| field | type | default | constraints | description |", "| --- | --- | --- | --- | --- |"]
    for path, node, required in fields(schema):
        default = f"`{_value(node['default'])}`" if "default" in node else ""
        lines.append(f"| `{prefix}{path}` | {_type(node)} | {_cell(default)} | {_cell(_constraints(node, required))} "
                     f"| {_cell(node.get('description', ''))} |")
    return lines


def _rules(schema: dict[str, Any], path: str = "spec") -> Iterator[tuple[str, dict[str, Any]]]:
    for rule in schema.get("x-kubernetes-validations") or []:
        yield path, rule
    for name, node in (schema.get("properties") or {}).items():
        yield from _rules(node, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            yield from _rules(node["items"], f"{path}.{name}[]")


def reference(crd_path: Path = CRD) -> str:
    """The whole reference page, as Markdown."""
    crd = yaml.safe_load(crd_path.read_text())
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    schema = version["schema"]["openAPIV3Schema"]
    names = crd["spec"]["names"]
    out = [f"# {names['kind']} reference", "",
           f"`{crd['spec']['group']}/{version['name']}`, kind `{names['kind']}`, plural `{names['plural']}`"
           + (f", short names {', '.join(f'`{n}`' for n in names.get('shortNames', []))}" if names.get("shortNames")
              else "") + f", {crd['spec']['scope'].lower()}.",
           "", "Generated from `crds/inferenceservices.kubeinfer.io.yaml` when the documentation is built "
           "(`scripts/crd_reference.py`): what is here is what the API server enforces.", "",
           _cell(schema.get("description", "")), "", "## spec", ""]
    out += _table(schema["properties"]["spec"], "spec.")
    out += ["", "## Validation rules", "",
            "Checked by the API server on `kubectl apply` (CEL); the operator makes the same checks.", "",
            "| where | rule | message |", "| --- | --- | --- |"]
    for path, rule in _rules(schema["properties"]["spec"]):
        out.append(f"| `{path}` | `{_cell(rule['rule'])}` | {_cell(rule.get('message', ''))} |")
    for rule in schema.get("x-kubernetes-validations") or []:
        out.append(f"| (resource) | `{_cell(rule['rule'])}` | {_cell(rule.get('message', ''))} |")
    out += ["", "## Columns", "", "`kubectl get kisvc` shows these (`-o wide` also those of priority 1):", "",
            "| column | from | priority | description |", "| --- | --- | --- | --- |"]
    for column in version.get("additionalPrinterColumns") or []:
        out.append(f"| {column['name']} | `{column['jsonPath']}` | {column.get('priority', 0)} | "
                   f"{_cell(column.get('description', ''))} |")
    out += ["", "## status", "", "Written by the operator only (the status subresource).", ""]
    out += _table(schema["properties"]["status"], "status.")
    scale = (version.get("subresources") or {}).get("scale")
    if scale:
        out += ["", "## Scale subresource", "",
                f"`kubectl scale` and autoscalers read `{scale['specReplicasPath']}` and "
                f"`{scale['statusReplicasPath']}`, with the pods selected by `{scale['labelSelectorPath']}`."]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(reference(Path(sys.argv[1]) if len(sys.argv) > 1 else CRD))
