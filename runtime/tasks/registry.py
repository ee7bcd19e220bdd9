"""The tasks a runtime can serve, each registered once by its own module, and what the transports read from them.

A task module registers a ``TaskSpec``: its request-side ``Task`` class, the kind of model its engine runs, its
RPCs with their codecs, its flags and its config checks. An ``ImagesRpc`` (images and parameters in, one answer
per image) is served by native gRPC, by REST (``POST /v1/<rest>``) and, as the task's ``oip`` call, by both
bindings of the Open Inference Protocol; a ``StreamingRpc`` (any other shape) by native gRPC. The transports build
their routes from every registered RPC, and the data plane answers FAILED_PRECONDITION for one the served task
does not serve. Every module of this package is imported (and so registers) when the registry is first read;
a task defined elsewhere (a test's) registers by being imported.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from google.protobuf.message import Message

from kubeinfer.runtime.config import ConfigError, Flag, ServeConfig
from kubeinfer.runtime.engine.base import EngineKind
from kubeinfer.runtime.images import ImageInput
from kubeinfer.runtime.oip.tensors import Tensor, TensorSpec
from kubeinfer.runtime.parameters import Parameters
from kubeinfer.runtime.tasks.base import Task

R = TypeVar("R")


@dataclass(frozen=True)
class OipOutputs(Generic[R]):
    """A task's answers as Open Inference Protocol output tensors: what ModelMetadata lists, and the tensors of a
    request's results, in that order."""

    outputs: tuple[TensorSpec, ...]
    tensors: Callable[[list[R]], list[Tensor]]


@dataclass(frozen=True)
class ImagesRpc(Generic[R]):
    """An RPC of images and parameters answered per image: ``run(task, images, parameters)`` once the data plane
    checked the request's limits. ``parameters`` are those it reads (REST refuses others); ``request`` must have
    a repeated ``images`` field of ``kubeinfer.v1.Image``."""

    name: str
    request: type[Message]
    response: type[Message]
    parameters: tuple[str, ...]
    parameters_from_proto: Callable[[Any], Parameters]
    run: Callable[[Any, Sequence[ImageInput], Parameters], Awaitable[list[R]]]
    response_to_proto: Callable[[list[R]], Message]
    rest: str | None = None  # POST /v1/<rest>
    oip: OipOutputs[R] | None = None


@dataclass(frozen=True)
class StreamingRpc:
    """An RPC of any other shape, native gRPC only: ``handle(task, request)`` gets the request message, or an async
    iterator of them when ``requests_stream``, and gives the response (awaitable), or an async iterator of them
    when ``responses_stream``."""

    name: str
    request: type[Message]
    response: type[Message]
    requests_stream: bool
    responses_stream: bool
    handle: Callable[[Any, Any], Awaitable[Message] | AsyncIterator[Message]]


Rpc = ImagesRpc[Any] | StreamingRpc


@dataclass(frozen=True)
class TaskSpec:
    """One task, as its module registers it."""

    name: str  # --task
    task: type[Task]
    engine: EngineKind[Any] | None  # the kind of model it serves (None: none)
    rpcs: tuple[Rpc, ...]
    oip: ImagesRpc[Any] | None = None  # what ModelInfer runs (None: the task has no tensor form)
    flags: tuple[Flag[Any], ...] = ()  # those it reads (its engine kind's come with the kind)
    model_optional: bool = False  # serves without --model (then with no engine)
    check: Callable[[ServeConfig], str | None] | None = None  # what is wrong with a config for it (None: fine)

    def serves(self, rpc: str) -> bool:
        return any(r.name == rpc for r in self.rpcs)

    @property
    def all_flags(self) -> tuple[Flag[Any], ...]:
        """Its own flags and those of the kind of model it serves."""
        return self.flags + (self.engine.flags if self.engine is not None else ())

    def engine_kind(self, config: ServeConfig) -> EngineKind[Any] | None:
        """The kind of model this runtime loads (None: a task whose model is optional, started without one)."""
        return None if self.model_optional and config.model is None else self.engine


_TASKS: dict[str, TaskSpec] = {}
_discovered = False


def register(spec: TaskSpec) -> TaskSpec:
    """Add ``spec`` (a task module calls this once, at import); an RPC two tasks serve must be the same object."""
    if spec.name in _TASKS and _TASKS[spec.name] is not spec:
        raise ValueError(f"task {spec.name!r} is registered twice")
    for rpc in spec.rpcs:
        known = _rpc(rpc.name)
        if known is not None and known is not rpc:
            raise ValueError(f"RPC {rpc.name} of task {spec.name!r} is already another task's")
    for declared in spec.all_flags:
        known_flag = next((f for f in _flags() if f.name == declared.name), None)
        if known_flag is not None and known_flag is not declared:
            raise ValueError(f"flag --{declared.name} of task {spec.name!r} is already another task's")
    _TASKS[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Forget a task (a test's, when the test is over)."""
    _TASKS.pop(name, None)


def _discover() -> None:
    """Import every module of this package once, so each task module has registered itself."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    package = importlib.import_module("kubeinfer.runtime.tasks")
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")


def tasks() -> list[TaskSpec]:
    _discover()
    return list(_TASKS.values())


def task_names() -> list[str]:
    return [spec.name for spec in tasks()]


def spec_of(name: str) -> TaskSpec:
    _discover()
    try:
        return _TASKS[name]
    except KeyError:
        raise ConfigError(f"--task must be one of {', '.join(_TASKS)}") from None


def _rpc(name: str) -> Rpc | None:
    return next((rpc for spec in _TASKS.values() for rpc in spec.rpcs if rpc.name == name), None)


def rpcs() -> list[Rpc]:
    """Every registered task's RPCs, each once, in registration order."""
    found: dict[str, Rpc] = {}
    for spec in tasks():
        for rpc in spec.rpcs:
            found.setdefault(rpc.name, rpc)
    return list(found.values())


def tasks_serving(rpc: str) -> list[str]:
    return [spec.name for spec in tasks() if spec.serves(rpc)]


def oip_tasks() -> list[str]:
    return [spec.name for spec in tasks() if spec.oip is not None]


def flags() -> list[Flag[Any]]:
    """Every registered task's flags, each once."""
    _discover()
    return _flags()


def _flags() -> list[Flag[Any]]:
    found: dict[str, Flag[Any]] = {}
    for spec in _TASKS.values():
        for declared in spec.all_flags:
            found.setdefault(declared.name, declared)
    return list(found.values())


def check(config: ServeConfig) -> None:
    """What the served task needs of the config: a model (unless optional), and its own checks (ConfigError)."""
    spec = spec_of(config.task)
    if config.model is None and not spec.model_optional:
        raise ConfigError(f"--model is required for task {config.task!r}")
    problem = spec.check(config) if spec.check is not None else None
    if problem is not None:
        raise ConfigError(problem)
