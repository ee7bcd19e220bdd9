"""The Open Inference Protocol's operations, independent of gRPC or REST: both bindings call ``OipOperations``.

Model name = ``--model-name``, one version, "1". Requests go through the same data plane
(dynamic batcher, limits) as the native RPCs; the transports count every call under protocol
"v2" with the operation's gRPC method name as ``rpc`` (REST calls as ``http:<method>``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from kubeinfer import __version__
from kubeinfer.runtime.dataplane import DataPlane
from kubeinfer.runtime.errors import NotFound, WrongTask, invalid_argument
from kubeinfer.runtime.oip.inputs import INPUTS, ParameterValue, images_from_inputs
from kubeinfer.runtime.oip.tensors import Tensor, TensorSpec
from kubeinfer.runtime.parameters import Parameters
from kubeinfer.runtime.tasks import registry

SERVER_NAME = "kubeinfer"
MODEL_VERSION = "1"
EXTENSIONS = ("binary_tensor_data",)


@dataclass(slots=True)
class RequestedOutput:
    name: str
    binary: bool | None = None  # the binary_data parameter, when the client set it


@dataclass(slots=True)
class InferRequest:
    model_name: str
    model_version: str = ""
    id: str = ""
    parameters: Mapping[str, ParameterValue] = field(default_factory=dict)
    inputs: list[Tensor] = field(default_factory=list)
    outputs: list[RequestedOutput] = field(default_factory=list)  # empty: all outputs


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: list[Tensor]


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    parameters: Mapping[str, str] = field(default_factory=dict)  # REST only: the gRPC message has no such field


class OipOperations:
    """The protocol's operations over one runtime's data plane."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane
        self.model_name = dataplane.config.model_name
        self.task = dataplane.config.task
        self.rpc = registry.spec_of(self.task).oip  # the task's call with outputs as tensors (None: no tensor form)

    def server_ready(self) -> bool:
        return self.dataplane.ready

    def check_model(self, name: str, version: str = "") -> None:
        """NOT_FOUND unless ``name`` (and ``version``, when given) is the served model."""
        if name != self.model_name:
            raise NotFound(f"unknown model {name!r}; this runtime serves {self.model_name!r}")
        if version not in ("", MODEL_VERSION):
            raise NotFound(f"model {name!r} has no version {version!r}; it has version {MODEL_VERSION!r}")

    def model_ready(self, name: str, version: str = "") -> bool:
        self.check_model(name, version)
        return self.dataplane.ready

    def server_metadata(self) -> tuple[str, str, tuple[str, ...]]:
        return SERVER_NAME, __version__, EXTENSIONS

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        self.check_model(name, version)
        outputs = self.rpc.oip.outputs if self.rpc is not None and self.rpc.oip is not None else ()
        inputs = INPUTS if self.rpc is not None else ()
        info = self.dataplane.model_info()
        parameters = {"model_file": info.model_path, "model_format": info.model_format}
        if info.revision:  # a progressive rollout's revision of this replica
            parameters["revision"] = info.revision
        return ModelMetadata(self.model_name, (MODEL_VERSION,), f"kubeinfer_{self.task}", inputs, outputs, parameters)

    async def infer(self, request: InferRequest) -> InferResponse:
        self.check_model(request.model_name, request.model_version)
        rpc = self.rpc
        if rpc is None or rpc.oip is None:
            raise WrongTask(f"the Open Inference Protocol serves tasks {', '.join(registry.oip_tasks())}; "
                            f"this runtime serves {self.task!r}")
        names = [spec.name for spec in rpc.oip.outputs]
        for output in request.outputs:
            if output.name not in names:
                raise invalid_argument(f"unknown output {output.name!r}; this model's outputs are {names}")
        images = images_from_inputs(request.inputs)
        tensors = rpc.oip.tensors(await self.dataplane.infer_images(rpc, images, Parameters(request.parameters)))
        if request.outputs:
            by_name = {t.name: t for t in tensors}
            tensors = [by_name[o.name] for o in request.outputs]
        return InferResponse(self.model_name, MODEL_VERSION, request.id, tensors)
