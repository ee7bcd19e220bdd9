"""GPU utilisation and memory of the runtime's CUDA device, read at scrape time.

A custom Prometheus collector, so the numbers are fresh on every scrape and nothing
polls in the background. NVML (``pynvml``, the library nvidia-smi uses) gives the
device-wide view: utilisation and memory of the whole GPU, whoever uses it; torch
adds what this process holds. On a CPU runtime, or where no driver is reachable,
the collector exports ``kubeinfer_gpu_present 0`` and empty GPU families, so
dashboards can tell "no GPU here" from "metrics missing".
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kubeinfer.runtime.metrics import PREFIX, RuntimeMetrics

log = logging.getLogger(__name__)

GPU_PRESENT = PREFIX + "gpu_present"
GPU_UTILIZATION = PREFIX + "gpu_utilization_ratio"
GPU_MEMORY_USED = PREFIX + "gpu_memory_used_bytes"
GPU_MEMORY_TOTAL = PREFIX + "gpu_memory_total_bytes"
GPU_MEMORY_ALLOCATED = PREFIX + "gpu_memory_allocated_bytes"
GPU_INFO = PREFIX + "gpu_info"
GPU_METRICS = (GPU_PRESENT, GPU_UTILIZATION, GPU_MEMORY_USED, GPU_MEMORY_TOTAL, GPU_MEMORY_ALLOCATED, GPU_INFO)

LABELS = ["model", "device"]
WARN_EVERY_SECONDS = 300.0


@dataclass(frozen=True, slots=True)
class GpuReading:
    """One look at the device; ``None`` where the source cannot tell."""

    name: str
    uuid: str
    utilization: float | None  # 0..1, share of the last sample period a kernel ran
    memory_used: int | None  # bytes, whole device
    memory_total: int | None  # bytes
    memory_allocated: int | None  # bytes held by this process's torch tensors


class GpuReader(Protocol):
    def read(self) -> GpuReading: ...


def cuda_index(device: str) -> int | None:
    """``cuda`` -> 0, ``cuda:N`` -> N, anything else (``cpu``) -> None."""
    if device == "cuda":
        return 0
    if device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    return None


class TorchNvmlReader:
    """Reads one CUDA device through NVML (device-wide) and torch (this process).

    The NVML handle is found by the device's UUID as torch sees it, so the numbers
    belong to the same GPU even when CUDA_VISIBLE_DEVICES renumbers devices.
    """

    def __init__(self, index: int) -> None:
        import torch

        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise RuntimeError(f"CUDA device {index} is not available (devices: {torch.cuda.device_count()})")
        self.torch = torch
        self.index = index
        props = torch.cuda.get_device_properties(index)
        self.name = str(props.name)
        self.uuid = _uuid_text(getattr(props, "uuid", ""))
        self.total = int(props.total_memory)
        self.nvml: Any = None
        self.handle: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.handle = (pynvml.nvmlDeviceGetHandleByUUID(self.uuid) if self.uuid
                           else pynvml.nvmlDeviceGetHandleByIndex(index))
            self.nvml = pynvml
        except Exception as exc:  # no NVML in the container: torch alone still gives memory
            log.warning("NVML unavailable (%s); GPU utilisation will not be exported", exc)

    def read(self) -> GpuReading:
        allocated = int(self.torch.cuda.memory_allocated(self.index))
        if self.nvml is not None:
            rates = self.nvml.nvmlDeviceGetUtilizationRates(self.handle)
            memory = self.nvml.nvmlDeviceGetMemoryInfo(self.handle)
            return GpuReading(self.name, self.uuid, rates.gpu / 100.0, int(memory.used), int(memory.total), allocated)
        free, total = self.torch.cuda.mem_get_info(self.index)
        return GpuReading(self.name, self.uuid, None, int(total - free), int(total), allocated)


class NvmlReader:
    """Reads one GPU, found by its UUID, through NVML alone: for a ``--frontends`` frontend process, which must
    not load torch or open a CUDA context of its own; the model process names the UUID. What the model's
    tensors hold is the model process's to know, so ``memory_allocated`` is left out."""

    def __init__(self, uuid: str) -> None:
        import pynvml

        pynvml.nvmlInit()
        self.nvml = pynvml
        self.uuid = uuid
        self.handle = pynvml.nvmlDeviceGetHandleByUUID(uuid)
        name = pynvml.nvmlDeviceGetName(self.handle)
        self.name = name.decode() if isinstance(name, bytes) else str(name)

    def read(self) -> GpuReading:
        rates = self.nvml.nvmlDeviceGetUtilizationRates(self.handle)
        memory = self.nvml.nvmlDeviceGetMemoryInfo(self.handle)
        return GpuReading(self.name, self.uuid, rates.gpu / 100.0, int(memory.used), int(memory.total), None)


def device_uuid(device: str) -> str:
    """The UUID of the CUDA device ``device`` names, as NVML wants it ("" on the CPU or when torch cannot tell)."""
    index = cuda_index(device)
    if index is None:
        return ""
    import torch

    try:
        return _uuid_text(getattr(torch.cuda.get_device_properties(index), "uuid", ""))
    except Exception as exc:
        log.warning("cannot read the UUID of %s: %s", device, exc)
        return ""


def _uuid_text(raw: object) -> str:
    """torch reports the UUID without NVML's ``GPU-`` prefix; NVML wants it."""
    text = str(raw or "")
    if not text:
        return ""
    return text if text.startswith(("GPU-", "MIG-")) else f"GPU-{text}"


class GpuCollector(Collector):
    """Exports the readings of ``reader`` (or only ``gpu_present 0`` when there is none)."""

    def __init__(self, model: str, device: str, reader: GpuReader | None) -> None:
        self.model = model
        self.device = device
        self.reader = reader
        self._lock = threading.Lock()
        self._last_warning = -WARN_EVERY_SECONDS

    def collect(self) -> Iterator[Metric]:
        labels = [self.model, self.device]
        present = GaugeMetricFamily(GPU_PRESENT, "1 when the runtime serves on a CUDA device it can read, else 0",
                                    labels=LABELS)
        info = GaugeMetricFamily(GPU_INFO, "The runtime's GPU: name and UUID (value always 1)",
                                 labels=[*LABELS, "name", "uuid"])
        util = GaugeMetricFamily(GPU_UTILIZATION, "Share of time a kernel ran on the GPU (NVML), 0..1", labels=LABELS)
        used = GaugeMetricFamily(GPU_MEMORY_USED, "GPU memory in use on the whole device", labels=LABELS)
        total = GaugeMetricFamily(GPU_MEMORY_TOTAL, "GPU memory of the device", labels=LABELS)
        allocated = GaugeMetricFamily(GPU_MEMORY_ALLOCATED, "GPU memory held by this runtime's tensors (torch)",
                                      labels=LABELS)
        reading = self._read()
        present.add_metric(labels, 1.0 if reading is not None else 0.0)
        if reading is not None:
            info.add_metric([*labels, reading.name, reading.uuid], 1.0)
            for family, value in ((util, reading.utilization), (used, reading.memory_used),
                                  (total, reading.memory_total), (allocated, reading.memory_allocated)):
                if value is not None:
                    family.add_metric(labels, float(value))
        yield from (present, info, util, used, total, allocated)

    def _read(self) -> GpuReading | None:
        if self.reader is None:
            return None
        try:
            with self._lock:  # NVML handles are not documented as thread-safe; scrapes may overlap
                return self.reader.read()
        except Exception as exc:  # a failing driver must not break /metrics for everything else
            now = time.monotonic()
            if now - self._last_warning >= WARN_EVERY_SECONDS:
                self._last_warning = now
                log.warning("reading GPU metrics for %s failed: %s", self.device, exc)
            return None


def register_gpu_collector(metrics: RuntimeMetrics, device: str, uuid: str | None = None) -> None:
    """Add the GPU collector for ``device`` to the runtime's registry; on ``cpu`` it only says there is no GPU.
    With ``uuid`` (a frontend's, from the model process; "" when it could not tell) the device is read through
    NVML alone."""
    reader: GpuReader | None = None
    index = cuda_index(device)
    if index is not None:
        try:
            if uuid is None:
                reader = TorchNvmlReader(index)
            elif uuid:
                reader = NvmlReader(uuid)
            else:
                raise RuntimeError("the model process could not name its GPU")
        except Exception as exc:
            log.warning("GPU metrics off for %s: %s", device, exc)
    metrics.process_registry.register(GpuCollector(metrics.model, device, reader))
