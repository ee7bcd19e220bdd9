"""The GPU collector: honest on CPU, well-formed readings on a GPU, and never breaking /metrics."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kubeinfer.runtime import gpu_metrics as gm
from kubeinfer.runtime.metrics import RuntimeMetrics


def scrape(metrics: RuntimeMetrics) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Metric family name -> samples, parsed back from the exposition the runtime serves."""
    body, _ = metrics.exposition()
    return {f.name: [(s.labels, s.value) for s in f.samples] for f in text_string_to_metric_families(body.decode())}


class FixedReader:
    """Readings as NVML would give them, for checking the exported shape on a machine without a GPU."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def read(self) -> gm.GpuReading:
        if self.fail:
            raise RuntimeError("NVML: GPU is lost")
        return gm.GpuReading("NVIDIA H100", "GPU-1234", 0.42, 3 * 2**30, 80 * 2**30, 2 * 2**30)


@pytest.mark.parametrize(("device", "index"), [("cpu", None), ("cuda", 0), ("cuda:3", 3), ("cudax", None)])
def test_cuda_index(device: str, index: int | None) -> None:
    assert gm.cuda_index(device) == index


def test_cpu_runtime_says_no_gpu_and_exports_empty_families() -> None:
    metrics = RuntimeMetrics("demo")
    gm.register_gpu_collector(metrics, "cpu")
    families = scrape(metrics)
    assert families[gm.GPU_PRESENT] == [({"model": "demo", "device": "cpu"}, 0.0)]
    for name in (gm.GPU_UTILIZATION, gm.GPU_MEMORY_USED, gm.GPU_MEMORY_TOTAL, gm.GPU_MEMORY_ALLOCATED, gm.GPU_INFO):
        assert families[name] == [], name  # declared (so the names are discoverable) but without samples


def test_cuda_device_without_a_gpu_degrades_to_absent() -> None:
    """Asked for cuda on a machine without one (this one), the collector reports 0 instead of failing."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the absent case cannot be shown")
    metrics = RuntimeMetrics("demo")
    gm.register_gpu_collector(metrics, "cuda:0")
    assert scrape(metrics)[gm.GPU_PRESENT] == [({"model": "demo", "device": "cuda:0"}, 0.0)]


def test_readings_become_labelled_gauges() -> None:
    metrics = RuntimeMetrics("demo")
    metrics.registry.register(gm.GpuCollector("demo", "cuda:0", FixedReader()))
    families = scrape(metrics)
    labels = {"model": "demo", "device": "cuda:0"}
    assert families[gm.GPU_PRESENT] == [(labels, 1.0)]
    assert families[gm.GPU_UTILIZATION] == [(labels, 0.42)]
    assert families[gm.GPU_MEMORY_USED] == [(labels, float(3 * 2**30))]
    assert families[gm.GPU_MEMORY_TOTAL] == [(labels, float(80 * 2**30))]
    assert families[gm.GPU_MEMORY_ALLOCATED] == [(labels, float(2 * 2**30))]
    assert families[gm.GPU_INFO] == [({**labels, "name": "NVIDIA H100", "uuid": "GPU-1234"}, 1.0)]


def test_a_failing_driver_does_not_break_the_scrape(caplog: pytest.LogCaptureFixture) -> None:
    metrics = RuntimeMetrics("demo")
    metrics.registry.register(gm.GpuCollector("demo", "cuda:0", FixedReader(fail=True)))
    metrics.model_ready.labels("demo").set(1)
    for _ in range(3):
        families = scrape(metrics)
    assert families[gm.GPU_PRESENT] == [({"model": "demo", "device": "cuda:0"}, 0.0)]
    assert families["kubeinfer_model_ready"] == [({"model": "demo"}, 1.0)]
    assert sum("GPU is lost" in r.getMessage() for r in caplog.records) == 1  # warned once, not per scrape


def test_uuid_gets_nvml_prefix() -> None:
    assert gm._uuid_text("1234-abcd") == "GPU-1234-abcd"
    assert gm._uuid_text("GPU-1234") == "GPU-1234"
    assert gm._uuid_text("MIG-9") == "MIG-9"
    assert gm._uuid_text("") == ""


def test_names_share_the_runtime_prefix() -> None:
    from kubeinfer.runtime.metrics import PREFIX

    assert all(name.startswith(PREFIX + "gpu_") for name in gm.GPU_METRICS)
