"""Static checks of the two images (no Docker engine here to build them).

Each Dockerfile is parsed: every copied path exists and survives .dockerignore, the entrypoint
names the real console script and sub-command, every pinned package matches pyproject.toml, the
right extra is installed, the final user is not root, and the runtime's ports and offline
settings match what the runtime actually reads.
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
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)$")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse(path: Path) -> list[Stage]:
    """Dockerfile -> stages of (INSTRUCTION, arguments), continuations joined and comments dropped."""
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
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = args.split()
            stages.append(Stage(parts[0], parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None))
        else:
            assert stages, f"{path.name}: {keyword} before FROM"
            stages[-1].instructions.append((keyword, args.strip()))
    return stages


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in stage.all("ENV"):
        for item in shlex.split(args):
            key, _, value = item.partition("=")
            env[key] = value
    return env


def pins() -> dict[str, dict[str, str]]:
    """pyproject pins by group ('' = base dependencies) -> {normalized name: version}."""
    groups = {"": PYPROJECT["project"]["dependencies"], **PYPROJECT["project"]["optional-dependencies"]}
    out: dict[str, dict[str, str]] = {}
    for group, requirements in groups.items():
        out[group] = {}
        for requirement in requirements:
            match = PIN.match(requirement.strip())
            assert match, f"pyproject {group or 'dependencies'}: {requirement!r} is not pinned with =="
            out[group][normalize(match.group(1))] = match.group(2)
    return out


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pip_installs(stages: list[Stage]) -> list[str]:
    """The arguments of every `pip install` in RUN lines."""
    args: list[str] = []
    for stage in stages:
        for run in stage.all("RUN"):
            commands: list[list[str]] = [[]]
            for word in shlex.split(run):
                if word in ("&&", ";", "||"):
                    commands.append([])
                else:
                    commands[-1].append(word)
            for words in commands:
                if words[:2] == ["pip", "install"] or (words[1:3] == ["-m", "pip"] and "install" in words):
                    args += [w for w in words[words.index("install") + 1:] if not w.startswith("-")]
    return args


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
def image(request: pytest.FixtureRequest) -> tuple[str, list[Stage]]:
    return request.param, parse(REPO / f"Dockerfile.{request.param}")


def test_copied_paths_exist_and_are_in_the_build_context(image: tuple[str, list[Stage]]) -> None:
    _, stages = image
    copied = 0
    for stage in stages:
        for args in stage.all("COPY") + stage.all("ADD"):
            words = args.split()
            if any(w.startswith("--from=") for w in words):
                continue
            sources = [w for w in words if not w.startswith("--")][:-1]
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: no such path in the repository"
                assert not dockerignored(source), f"COPY {source}: excluded by .dockerignore"
                copied += 1
    assert copied >= 6
    # Every package directory pyproject maps must be copied, or `pip install .` fails in the build.
    package_dirs = {d.split("/")[0] for d in PYPROJECT["tool"]["setuptools"]["package-dir"].values()}
    copied_dirs = {w.split("/")[0] for s in stages for a in s.all("COPY") for w in a.split()[:-1]}
    assert package_dirs <= copied_dirs, package_dirs - copied_dirs


def test_dockerignore_keeps_the_context_small() -> None:
    for heavy in (".venv", ".cache", ".git", "tests", "charts"):
        assert dockerignored(heavy), f"{heavy} would be sent to the Docker build"


def test_entrypoint_is_a_real_subcommand(image: tuple[str, list[Stage]]) -> None:
    name, stages = image
    entrypoints = stages[-1].all("ENTRYPOINT")
    assert len(entrypoints) == 1
    command = json.loads(entrypoints[0])  # exec form, so signals reach Python directly
    assert command[0] in PYPROJECT["project"]["scripts"]
    expected = {"runtime": "serve", "operator": "operator"}[name]
    assert command[1:] == [expected]
    assert expected in COMMANDS, f"`kubeinfer {expected}` is not a sub-command (kubeinfer/cli.py COMMANDS)"


def test_pins_match_pyproject_and_the_right_extra(image: tuple[str, list[Stage]]) -> None:
    name, stages = image
    known = pins()
    extra = name
    installed = pip_installs(stages)
    assert f".[{extra}]" in installed, f"Dockerfile.{name} must install the project with the {extra} extra"
    for arg in installed:
        if arg.startswith(".["):
            assert arg == f".[{extra}]", f"Dockerfile.{name} installs {arg}"
            continue
        match = PIN.match(arg)
        assert match, f"Dockerfile.{name}: `pip install {arg}` is not pinned with =="
        package, pinned = normalize(match.group(1)), match.group(2)
        groups = {g: v[package] for g, v in known.items() if package in v and g in ("", extra)}
        assert groups, f"Dockerfile.{name} pins {package}, which the {extra} extra does not list"
        assert set(groups.values()) == {pinned}, f"{package}=={pinned} but pyproject pins {groups}"
    if name == "operator":
        text = (REPO / "Dockerfile.operator").read_text()
        assert "torch" not in known["operator"] and not re.search(r"pip install[^\n]*torch", text)


def test_final_user_is_not_root(image: tuple[str, list[Stage]]) -> None:
    _, stages = image
    final = stages[-1]
    users = final.all("USER")
    assert users, "the final stage sets no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) >= 10000, "USER must be a numeric non-root uid (runAsNonRoot can verify it)"
    assert gid.isdigit() and int(gid) != 0
    created = " ".join(final.all("RUN"))
    assert f"--uid {uid}" in created, f"uid {uid} is not created by useradd"
    keywords = [kw for kw, _ in final.instructions]
    assert keywords.index("ENTRYPOINT") > keywords.index("USER")


def test_runtime_ports_and_offline_settings() -> None:
    stages = parse(REPO / "Dockerfile.runtime")
    final = stages[-1]
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


def test_runtime_base_matches_the_cuda_torch_is_built_for() -> None:
    """torch's CUDA wheels (nvidia-cuda-runtime) and the base image agree on CUDA major.minor."""
    stages = parse(REPO / "Dockerfile.runtime")
    bases = {s.base for s in stages}
    assert len(bases) == 1, bases
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-(base|runtime|cudnn-runtime)-ubuntu\d+\.\d+", bases.pop())
    assert match, "the runtime image must start from an nvidia/cuda image with a full version tag"
    major, minor = version("nvidia-cuda-runtime").split(".")[:2]
    assert (match.group(1), match.group(2)) == (major, minor)


def test_operator_base_is_the_tested_python() -> None:
    stages = parse(REPO / "Dockerfile.operator")
    floor = re.fullmatch(r">=(\d+\.\d+)", PYPROJECT["project"]["requires-python"])
    assert floor
    assert {s.base for s in stages} == {f"python:{floor.group(1)}-slim-bookworm"}


def test_image_users_match_the_pods_that_run_them() -> None:
    """The runtime image's user is the one the operator's pods run as; the operator's, the chart's runAsUser."""
    import yaml

    from kubeinfer.operator.render import RUN_AS

    runtime_user = parse(REPO / "Dockerfile.runtime")[-1].all("USER")[-1]
    assert runtime_user == f"{RUN_AS}:{RUN_AS}"
    operator_user = parse(REPO / "Dockerfile.operator")[-1].all("USER")[-1]
    values = yaml.safe_load((REPO / "charts" / "kubeinfer" / "values.yaml").read_text())["operator"]
    assert operator_user == f"{values['runAsUser']}:{values['runAsGroup']}"
