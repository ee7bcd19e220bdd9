"""Static checks of the two Dockerfiles: only what building and running the images does not check.

tests/test_images.py (and `make images`) builds both images and runs them; a build cannot tell that the default
base a user pulls is the right one (the builds here stand in a local base), that the image's own USER and
ENTRYPOINT match what the chart and the operator expect (the pods override them), that the build context stays
small, or that the layers are ordered for caching. Those are checked here.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import pytest

from kubeinfer.cli import COMMANDS, build_parser

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


@dataclass
class Dockerfile:
    args: dict[str, str]  # ARGs before the first FROM, with their defaults
    stages: list[Stage]


def parse(path: Path) -> Dockerfile:
    """Dockerfile -> global ARGs and stages of (INSTRUCTION, arguments), continuations joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, f"{path.name}: dangling line continuation"
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = rest.split()
            stages.append(Stage(parts[0], parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None))
        elif keyword == "ARG" and not stages:
            name, _, default = rest.strip().partition("=")
            args[name] = default
        else:
            assert stages, f"{path.name}: {keyword} before FROM"
            stages[-1].instructions.append((keyword, rest.strip()))
    return Dockerfile(args, stages)


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in stage.all("ENV"):
        for item in shlex.split(args):
            key, _, value = item.partition("=")
            env[key] = value
    return env


def dockerignored(path: str) -> bool:
    """Docker's rule: the last .dockerignore pattern matching the path (or a parent) decides."""
    patterns = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    ignored = False
    candidates = [path, *(str(p) for p in Path(path).parents if str(p) != ".")]
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatch(c, glob) or (glob == "**") for c in candidates):
            ignored = not negate
    return ignored


@pytest.fixture(params=["runtime", "operator"])
def image(request: pytest.FixtureRequest) -> tuple[str, Dockerfile]:
    return request.param, parse(REPO / f"Dockerfile.{request.param}")


def test_dockerignore_keeps_the_context_small() -> None:
    for heavy in (".venv", ".cache", ".git", "tests", "benchmarks", "charts", "scripts"):
        assert dockerignored(heavy), f"{heavy} would be sent to the image build"
    for needed in ("pyproject.toml", "README.md", "kubeinfer", "runtime", "clients", "operator", "protos"):
        assert not dockerignored(needed), f"{needed} is needed by `pip install .` in the build"


def test_the_default_base_is_the_tested_python_and_every_stage_uses_it(image: tuple[str, Dockerfile]) -> None:
    """A user's `docker build` pulls the default; the builds here replace it, so only this test reads it."""
    _, dockerfile = image
    floor = re.fullmatch(r">=(\d+\.\d+)", PYPROJECT["project"]["requires-python"])
    assert floor
    assert dockerfile.args.get("BASE_IMAGE") == f"python:{floor.group(1)}-slim-bookworm"
    assert {stage.base for stage in dockerfile.stages} == {"${BASE_IMAGE}"}


def test_dependencies_are_layered_before_the_code(image: tuple[str, Dockerfile]) -> None:
    """A code change rebuilds only the last layer: the dependency layer sees only the pins."""
    _, dockerfile = image
    stages = {stage.name: stage for stage in dockerfile.stages}
    assert stages["requirements"].all("COPY") == ["pyproject.toml /src/pyproject.toml"]
    assert stages["deps"].all("COPY") == ["--from=requirements /requirements.txt /src/requirements.txt"]
    final = dockerfile.stages[-1]
    assert final.instructions[-2:] == [("COPY", "--from=deps /opt/kubeinfer /opt/kubeinfer"),
                                       ("COPY", "--from=project /out/ /opt/kubeinfer/")]
    assert not final.all("ADD") and len(final.all("COPY")) == 2


def test_entrypoint_is_a_real_subcommand(image: tuple[str, Dockerfile]) -> None:
    name, dockerfile = image
    entrypoints = dockerfile.stages[-1].all("ENTRYPOINT")
    assert len(entrypoints) == 1
    command = json.loads(entrypoints[0])  # exec form, so signals reach Python directly
    assert command[0] in PYPROJECT["project"]["scripts"]
    expected = {"runtime": "serve", "operator": "operator"}[name]
    assert command[1:] == [expected]
    assert expected in COMMANDS, f"`kubeinfer {expected}` is not a sub-command (kubeinfer/cli.py COMMANDS)"


def test_final_user_is_not_root(image: tuple[str, Dockerfile]) -> None:
    _, dockerfile = image
    final = dockerfile.stages[-1]
    users = final.all("USER")
    assert users, "the final stage sets no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) >= 10000, "USER must be a numeric non-root uid (runAsNonRoot can verify it)"
    assert gid.isdigit() and int(gid) != 0
    created = " ".join(final.all("RUN"))
    assert f"--uid {uid}" in created, f"uid {uid} is not created by useradd"


def test_runtime_ports_and_offline_settings() -> None:
    final = parse(REPO / "Dockerfile.runtime").stages[-1]
    defaults = build_parser().parse_args(["serve"])
    assert sorted(int(p) for a in final.all("EXPOSE") for p in a.split()) == sorted(
        [defaults.grpc_port, defaults.http_port]) == [8001, 8080]
    env = env_of(final)
    assert env["YOLO_OFFLINE"] == "1" and env["HF_HUB_OFFLINE"] == "1"
    for writable in ("YOLO_CONFIG_DIR", "HOME", "TORCH_HOME", "MPLCONFIGDIR", "XDG_CACHE_HOME"):
        assert env[writable].startswith("/tmp"), f"{writable} must be under /tmp (the only writable path)"
    serve_flags = {a.dest for a in build_parser()._subparsers._group_actions[0].choices["serve"]._actions}
    for key in (k for k in env if k.startswith("KUBEINFER_")):
        assert key.removeprefix("KUBEINFER_").lower() in serve_flags, f"{key} is no serve flag"
    assert env["KUBEINFER_HOST"] == "0.0.0.0"
    assert "/opt/kubeinfer/bin" in env["PATH"].split(":")[0]


def test_runtime_asks_the_nvidia_toolkit_for_the_cuda_torch_is_built_for() -> None:
    """The NVIDIA_* settings NVIDIA's images carry, and the CUDA of torch's wheels (nvidia-cuda-runtime)."""
    env = env_of(parse(REPO / "Dockerfile.runtime").stages[-1])
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert set(env["NVIDIA_DRIVER_CAPABILITIES"].split(",")) >= {"compute", "utility"}
    major, minor = version("nvidia-cuda-runtime").split(".")[:2]
    assert env["NVIDIA_REQUIRE_CUDA"] == f"cuda>={major}.{minor}"


def test_image_users_match_the_pods_that_run_them() -> None:
    """The runtime image's user is the one the operator's pods run as; the operator's, the chart's runAsUser."""
    import yaml

    from kubeinfer.operator.render import RUN_AS

    runtime_user = parse(REPO / "Dockerfile.runtime").stages[-1].all("USER")[-1]
    assert runtime_user == f"{RUN_AS}:{RUN_AS}"
    operator_user = parse(REPO / "Dockerfile.operator").stages[-1].all("USER")[-1]
    values = yaml.safe_load((REPO / "charts" / "kubeinfer" / "values.yaml").read_text())["operator"]
    assert operator_user == f"{values['runAsUser']}:{values['runAsGroup']}"
