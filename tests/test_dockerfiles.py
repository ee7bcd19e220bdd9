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


def target(dockerfile: Dockerfile, name: str | None) -> Stage:
    """The image a target builds (the last stage when ``name`` is None), with the instructions of the stages it
    is built FROM before its own, as a builder applies them."""
    stages = {stage.name: stage for stage in dockerfile.stages if stage.name}
    stage = stages[name] if name else dockerfile.stages[-1]
    chain = [stage]
    while chain[0].base in stages:
        chain.insert(0, stages[chain[0].base])
    return Stage(chain[0].base, stage.name, [i for link in chain for i in link.instructions])


RUNTIME = parse(REPO / "Dockerfile.runtime")
OPERATOR = parse(REPO / "Dockerfile.operator")
# Each image a Dockerfile builds: (Dockerfile name, target, the deps stage the image takes its venv from).
IMAGES = {"runtime-cpu": ("runtime", "cpu", "deps-cpu"), "runtime-gpu": ("runtime", "gpu", "deps-gpu"),
          "operator": ("operator", None, "deps")}


@pytest.fixture(params=sorted(IMAGES))
def image(request: pytest.FixtureRequest) -> tuple[str, Dockerfile, Stage, str]:
    """(Dockerfile name, the parsed Dockerfile, the image's stage with what it inherits, its deps stage)."""
    name, target_name, deps = IMAGES[request.param]
    dockerfile = parse(REPO / f"Dockerfile.{name}")
    return name, dockerfile, target(dockerfile, target_name), deps


def test_dockerignore_keeps_the_context_small() -> None:
    for heavy in (".venv", ".cache", ".git", "tests", "benchmarks", "charts", "scripts"):
        assert dockerignored(heavy), f"{heavy} would be sent to the image build"
    for needed in ("pyproject.toml", "README.md", "kubeinfer", "runtime", "clients", "operator", "protos"):
        assert not dockerignored(needed), f"{needed} is needed by `pip install .` in the build"


def test_the_default_base_is_the_tested_python_and_every_stage_uses_it(
        image: tuple[str, Dockerfile, Stage, str]) -> None:
    """A user's `docker build` pulls the default; the builds here replace it, so only this test reads it."""
    _, dockerfile, final, _ = image
    floor = re.fullmatch(r">=(\d+\.\d+)", PYPROJECT["project"]["requires-python"])
    assert floor
    assert dockerfile.args.get("BASE_IMAGE") == f"python:{floor.group(1)}-slim-bookworm"
    names = {stage.name for stage in dockerfile.stages}
    assert {stage.base for stage in dockerfile.stages} - names == {"${BASE_IMAGE}"}
    assert final.base == "${BASE_IMAGE}"


def test_dependencies_are_layered_before_the_code(image: tuple[str, Dockerfile, Stage, str]) -> None:
    """A code change rebuilds only the last layer: the dependency layer sees only the pins."""
    _, dockerfile, final, deps = image
    stages = {stage.name: stage for stage in dockerfile.stages}
    assert stages["requirements"].all("COPY") == ["pyproject.toml /src/pyproject.toml"]
    (copied,) = stages[deps].all("COPY")
    assert re.fullmatch(r"--from=requirements /requirements(-\w+)?\.txt /src/requirements\.txt", copied)
    assert final.instructions[-2:] == [("COPY", f"--from={deps} /opt/kubeinfer /opt/kubeinfer"),
                                       ("COPY", "--from=project /out/ /opt/kubeinfer/")]
    assert not final.all("ADD") and len(final.all("COPY")) == 2


def test_the_cpu_image_installs_no_torch() -> None:
    """The cpu image's pins are the base dependencies and the runtime extra: nothing of torch, CUDA or
    ultralytics, and OpenCV only headless (no GUI libraries to install)."""
    extras = PYPROJECT["project"]["optional-dependencies"]
    lean = {re.split(r"[=<>\[]", pin)[0].lower() for pin in PYPROJECT["project"]["dependencies"] + extras["runtime"]}
    assert not lean & {"torch", "torchvision", "ultralytics", "opencv-python", "onnx", "onnxslim"}
    assert not any(name.startswith("nvidia-") and name != "nvidia-ml-py" for name in lean)
    assert {"onnxruntime", "opencv-python-headless", "numpy", "grpcio"} <= lean
    deps_cpu = {stage.name: stage for stage in RUNTIME.stages}["deps-cpu"]
    assert "find_spec('torch') is not None" in " ".join(deps_cpu.all("RUN"))  # the build fails if torch creeps in


def test_entrypoint_is_a_real_subcommand(image: tuple[str, Dockerfile, Stage, str]) -> None:
    name, _, final, _ = image
    entrypoints = final.all("ENTRYPOINT")
    assert len(entrypoints) == 1
    command = json.loads(entrypoints[0])  # exec form, so signals reach Python directly
    assert command[0] in PYPROJECT["project"]["scripts"]
    expected = {"runtime": "serve", "operator": "operator"}[name]
    assert command[1:] == [expected]
    assert expected in COMMANDS, f"`kubeinfer {expected}` is not a sub-command (kubeinfer/cli.py COMMANDS)"


def test_final_user_is_not_root(image: tuple[str, Dockerfile, Stage, str]) -> None:
    _, _, final, _ = image
    users = final.all("USER")
    assert users, "the final stage sets no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) >= 10000, "USER must be a numeric non-root uid (runAsNonRoot can verify it)"
    assert gid.isdigit() and int(gid) != 0
    created = " ".join(final.all("RUN"))
    assert f"--uid {uid}" in created, f"uid {uid} is not created by useradd"


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_runtime_ports_and_offline_settings(variant: str) -> None:
    final = target(RUNTIME, variant)
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


def test_the_gpu_image_asks_the_nvidia_toolkit_for_the_cuda_torch_is_built_for() -> None:
    """The NVIDIA_* settings NVIDIA's images carry, and the CUDA of torch's wheels (nvidia-cuda-runtime); the
    default target (a plain `docker build`) is the gpu image, the cpu image asks for no GPU."""
    env = env_of(target(RUNTIME, "gpu"))
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert set(env["NVIDIA_DRIVER_CAPABILITIES"].split(",")) >= {"compute", "utility"}
    major, minor = version("nvidia-cuda-runtime").split(".")[:2]
    assert env["NVIDIA_REQUIRE_CUDA"] == f"cuda>={major}.{minor}"
    assert RUNTIME.stages[-1].name == "gpu"
    assert not any(key.startswith("NVIDIA_") for key in env_of(target(RUNTIME, "cpu")))


def test_image_users_match_the_pods_that_run_them() -> None:
    """The runtime images' user is the one the operator's pods run as; the operator's, the chart's runAsUser."""
    import yaml

    from kubeinfer.operator.render import RUN_AS

    for variant in ("cpu", "gpu"):
        assert target(RUNTIME, variant).all("USER")[-1] == f"{RUN_AS}:{RUN_AS}"
    operator_user = OPERATOR.stages[-1].all("USER")[-1]
    values = yaml.safe_load((REPO / "charts" / "kubeinfer" / "values.yaml").read_text())["operator"]
    assert operator_user == f"{values['runAsUser']}:{values['runAsGroup']}"


def test_the_cpu_image_keeps_the_face_detector_the_video_task_loads() -> None:
    """The cpu image drops OpenCV's other Haar cascades; the one `faces` loads must stay."""
    from kubeinfer.runtime.tasks.video.ops import FACE_CASCADE

    deps_cpu = " ".join({stage.name: stage for stage in RUNTIME.stages}["deps-cpu"].all("RUN"))
    assert f"! -name {FACE_CASCADE} -delete" in deps_cpu
