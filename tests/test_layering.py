"""The runtime's imports point one way: transports -> data plane -> tasks -> engine -> models/batcher -> metrics,
and only the engine touches a model or the batcher.

Read from the source (no import runs): every ``import`` of a ``kubeinfer.runtime`` module, at module
level or inside a function, except those under ``if TYPE_CHECKING:``, which never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

from runtime_support import REPO

RUNTIME = REPO / "runtime"
PACKAGE = "kubeinfer.runtime"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(RUNTIME).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE, *parts])


MODULES = {module_name(path): path for path in RUNTIME.rglob("*.py")}


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(path: Path) -> set[str]:
    """The runtime modules ``path`` imports (a ``from package import module`` counts as that module)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {name for name in found if name in MODULES}


GRAPH = {name: imports(path) - {name} for name, path in MODULES.items()}


def cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(GRAPH[node]):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(GRAPH):
        if node not in index:
            connect(node)
    return found


def test_the_runtime_has_no_import_cycle() -> None:
    assert cycles() == []


def depends_on(module: str, target: str) -> bool:
    seen: set[str] = set()
    todo = [module]
    while todo:
        current = todo.pop()
        for imported in GRAPH[current]:
            if imported == target or imported.startswith(target + "."):
                return True
            if imported not in seen:
                seen.add(imported)
                todo.append(imported)
    return False


def test_layers_point_down() -> None:
    layers = [
        ("transports", [f"{PACKAGE}.transports"]),
        # the rollout's shadow mirror: offered calls by the gRPC transport; reads the traffic table, not the data plane
        ("shadow", [f"{PACKAGE}.shadow"]),
        ("data plane", [f"{PACKAGE}.dataplane", f"{PACKAGE}.oip.protocol", f"{PACKAGE}.oip.inputs"]),
        ("tasks", [f"{PACKAGE}.tasks", f"{PACKAGE}.detection"]),
        ("engine", [f"{PACKAGE}.engine"]),
        ("primitives", [f"{PACKAGE}.batching", f"{PACKAGE}.models", f"{PACKAGE}.images", f"{PACKAGE}.gallery",
                        f"{PACKAGE}.parameters", f"{PACKAGE}.model_info", f"{PACKAGE}.traffic",
                        f"{PACKAGE}.concurrency", f"{PACKAGE}.config", f"{PACKAGE}.metrics", f"{PACKAGE}.errors",
                        # the tensors' wire codec, which a task's OIP outputs are written in (as its protobuf codec
                        # is written in kubeinfer.v1's messages)
                        f"{PACKAGE}.oip.tensors"]),
    ]
    upward = []
    for position, (_, members) in enumerate(layers):
        higher = [prefix for _, above in layers[:position] for prefix in above]
        for module in GRAPH:
            if any(module == m or module.startswith(m + ".") for m in members):
                upward += [(module, h) for h in higher if depends_on(module, h)]
    assert upward == []


# What the request side may import from models/: plain data and geometry (batch items, boxes, letterbox, an image
# model's preprocessing), no model and no model library.
MODEL_FREE = {f"{PACKAGE}.models.yolo_io", f"{PACKAGE}.models.preprocessing"}
# Tools that load a model on purpose, outside the serving path: `kubeinfer export` runs its export once before
# writing it, `kubeinfer demo` trains one.
OFFLINE_TOOLS = {f"{PACKAGE}.commands.export", f"{PACKAGE}.demo_models"}


def test_only_the_engine_touches_a_model_or_the_batcher() -> None:
    """Tasks, data plane, transports and lifecycles reach a model through an engine (``kubeinfer.runtime.engine``)
    and never import a model module or the batcher themselves, so the same task code runs over a model here or
    in the model process."""
    inside = (f"{PACKAGE}.engine", f"{PACKAGE}.models", f"{PACKAGE}.batching")
    touching = sorted(
        (module, imported) for module, targets in GRAPH.items()
        if not module.startswith(inside) and module not in OFFLINE_TOOLS
        for imported in targets
        if imported == f"{PACKAGE}.batching"
        or (imported.startswith(f"{PACKAGE}.models.") and imported not in MODEL_FREE))
    assert touching == []


def test_settings_and_plain_types_import_no_runtime_machinery() -> None:
    """config, model_info and the video pipeline's spec load without the server, a model library or OpenCV."""
    for module in ("config", "model_info", "parameters", "errors", "cpus", "tasks.video.pipeline_spec"):
        name = f"{PACKAGE}.{module}"
        assert GRAPH[name] <= {f"{PACKAGE}.errors", f"{PACKAGE}.cpus"}, (name, GRAPH[name])
        source = MODULES[name].read_text()
        assert "import cv2" not in source and "import torch" not in source, name


def test_the_source_layout_lists_every_runtime_module() -> None:
    """docs/development.md's layout of the runtime names every module under runtime/."""
    page = (REPO / "docs" / "development.md").read_text()
    layout = page[page.index("runtime/                    imports point down"):]
    layout = layout[:layout.index("```")]
    missing = sorted(str(path.relative_to(RUNTIME)) for path in RUNTIME.rglob("*.py")
                     if path.name != "__init__.py" and path.name not in layout)
    assert missing == []
