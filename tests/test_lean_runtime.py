"""The lean runtime: an ONNX model is served on numpy, OpenCV and ONNX Runtime alone, for every task.

Each server runs where torch, torchvision, ultralytics and onnx cannot be imported (their ``sys.modules`` entries
are None, which is how Python sees a package that is not installed): what the cpu image is, which
tests/test_images.py builds and runs for real. And where they are installed (this venv), serving an ONNX model
must still not import them. A probe thread in the server's own process waits for /readyz, sends one real
request through the client and reports what was imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from classify_support import colour_models, noisy, write_labels
from conftest import fresh_images
from recognize_support import ALL_BRANDS, logo_encoders, write_base_data
from runtime_support import CACHE, free_port, runtime_env

from kubeinfer.runtime.models.backend import choose_backend

HEAVY = ("torch", "torchvision", "ultralytics", "onnx", "onnxslim")

PROBE = '''
import json, os, sys, threading, time, urllib.request
import numpy as np

blocked, task, http_port, grpc_port = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
for name in blocked:
    sys.modules[name] = None  # as if not installed: import fails, importlib.util.find_spec answers None
HEAVY = {"torch", "torchvision", "ultralytics", "onnx", "onnxslim", "matplotlib", "scipy", "pandas"}


def ask(client):
    rng = np.random.default_rng(5)
    image = rng.integers(0, 255, (96, 120, 3), dtype=np.uint8)
    if task == "detect":
        return [len(r.detections) for r in client.detect([image, image], return_masks=True)]
    if task == "classify":
        return [r.label for r in client.classify([image])]
    if task == "stream-classify":
        return [p.window_fill for p in client.stream_classify([image] * 3, stream_id="lean")]
    if task == "recognize":
        return [r.label for r in client.recognize([image])]
    return [f.sequence + 1 for f in client.process_video([image] * 4, ops=["detect"])]


def probe():
    answer, error = None, None
    try:
        for _ in range(1200):
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.05)
        from kubeinfer.clients import Client
        with Client(f"127.0.0.1:{grpc_port}", timeout=60) as client:
            answer = ask(client)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    loaded = sorted(m for m, module in sys.modules.items() if module is not None and m.split(".")[0] in HEAVY)
    print("PROBE " + json.dumps({"answer": answer, "error": error, "loaded": loaded}), flush=True)
    os._exit(0)


threading.Thread(target=probe, daemon=True).start()
from kubeinfer.cli import main
sys.exit(main(["serve", *sys.argv[5:], "--host", "127.0.0.1", "--grpc-port", grpc_port, "--http-port", http_port]))
'''


def serve_and_probe(task: str, args: list[str], blocked: bool) -> dict[str, Any]:
    """`kubeinfer serve --task TASK ARGS` with one probe request; what the probe saw."""
    http_port, grpc_port = free_port(), free_port()
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(list(HEAVY) if blocked else []), task,
                           str(http_port), str(grpc_port), "--task", task, *args], capture_output=True, text=True,
                          timeout=300, env=runtime_env())
    lines = [line for line in done.stdout.splitlines() if line.startswith("PROBE ")]
    assert lines, f"the server exited ({done.returncode}) before the probe answered:\n{done.stderr[-3000:]}"
    return json.loads(lines[-1].removeprefix("PROBE "))


@pytest.fixture(scope="module")
def onnx_models(detector_model: Path, segmentation_model: Path, tmp_path_factory: pytest.TempPathFactory,
                ) -> dict[str, list[str]]:
    """Each task's ONNX model and flags."""
    exports = CACHE / "exports"
    detector = choose_backend(detector_model, "onnx", "cpu", exports, None).path
    segmenter = choose_backend(segmentation_model, "onnx", "cpu", exports, None).path
    labels = write_labels(tmp_path_factory.mktemp("labels"), "txt")
    base = write_base_data(tmp_path_factory.mktemp("base"), dict(list(ALL_BRANDS.items())[:3]))
    colours = str(colour_models().onnx)
    return {
        "detect": ["--model", str(segmenter)],
        "classify": ["--model", colours, "--labels", str(labels)],
        "stream-classify": ["--model", colours, "--labels", str(labels), "--window", "2"],
        "recognize": ["--model", str(logo_encoders().onnx), "--base-data", str(base)],
        "video": ["--model", str(detector)],
    }


@pytest.mark.parametrize("task", ["detect", "classify", "stream-classify", "recognize", "video"])
@pytest.mark.parametrize("blocked", [True, False], ids=["torch-not-installed", "torch-installed"])
def test_an_onnx_model_is_served_without_torch(onnx_models: dict[str, list[str]], task: str, blocked: bool) -> None:
    seen = serve_and_probe(task, onnx_models[task], blocked)
    assert seen["error"] is None, seen
    assert seen["answer"], seen  # a real answer came back
    assert seen["loaded"] == [], f"serving an ONNX {task} model imported {seen['loaded']}"


def test_a_model_only_torch_runs_fails_in_one_line_where_torch_is_missing(detector_model: Path,
                                                                          tmp_path: Path) -> None:
    """The cpu image given a .pt: one line naming what is missing and what to do, exit 1, no traceback."""
    blocker = "import sys\nfor m in ('torch', 'torchvision', 'ultralytics'): sys.modules[m] = None\n"
    code = blocker + "from kubeinfer.cli import main\nsys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", code, "serve", "--task", "detect", "--model", str(detector_model),
                           "--host", "127.0.0.1", "--grpc-port", str(free_port()), "--http-port", str(free_port()),
                           "--cache-dir", str(tmp_path)], capture_output=True, text=True, timeout=120,
                          env=runtime_env())
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last == ("kubeinfer serve: detector.pt needs torch, which this runtime does not have (the cpu image "
                    "serves ONNX models): serve it with the gpu image, or export it first with `kubeinfer export`")
    assert "Traceback" not in done.stderr


def test_the_numpy_masks_are_ultralytics_masks(segmentation_model: Path) -> None:
    """Mask pixels from the prototypes (numpy and OpenCV) against ultralytics' process_mask (torch) on the same
    kept rows: equal but for a few edge pixels where two bilinear implementations round differently."""
    import torch
    from ultralytics.utils import ops

    from kubeinfer.runtime.models.yolo_io import Selection
    from kubeinfer.runtime.models.yolo_masks import instance_masks
    from kubeinfer.runtime.models.yolo_onnx import YoloOnnxDetector

    onnx = choose_backend(segmentation_model, "onnx", "cpu", CACHE / "exports", None).path
    detector = YoloOnnxDetector(onnx, "cpu", None)
    assert detector.segmentation
    selection = Selection(0.25, 0.45, 300, (), True)
    items = [detector.preprocess(np.ascontiguousarray(s.pixels[..., ::-1]), selection)
             for s in fresh_images(seed=62, count=6)]
    compared = 0
    for raw in detector.forward(items):
        assert raw.kept is not None and raw.prototypes is not None
        if not raw.kept.shape[0]:
            continue
        got = instance_masks(raw.prototypes, raw.kept, detector.image_size)
        kept = torch.from_numpy(raw.kept)
        want = ops.process_mask(torch.from_numpy(raw.prototypes), kept[:, 6:], kept[:, :4],
                                (detector.image_size,) * 2, upsample=True).numpy()
        assert got.shape == want.shape and got.dtype == np.uint8
        assert (got != want).mean() < 0.002
        assert got.sum() > 0
        compared += got.shape[0]
    assert compared >= 3


def _boxes(detector: Any, seed: int = 63, count: int = 6) -> list[list[tuple[float, ...]]]:
    from kubeinfer.runtime.models.yolo_io import Selection

    selection = Selection(0.25, 0.45, 300)
    items = [detector.preprocess(np.ascontiguousarray(s.pixels[..., ::-1]), selection)
             for s in fresh_images(seed=seed, count=count)]
    return [[(b.x1, b.y1, b.x2, b.y2, b.score, b.class_id) for b in raw.boxes] for raw in detector.forward(items)]


def _close(got: list[list[tuple[float, ...]]], want: list[list[tuple[float, ...]]]) -> None:
    assert sum(map(len, want)) >= 6  # real boxes to compare
    for g, w in zip(got, want, strict=True):
        assert len(g) == len(w)
        np.testing.assert_allclose(np.asarray(g).reshape(-1, 6), np.asarray(w).reshape(-1, 6), atol=1e-3)


@pytest.fixture(scope="module")
def exported(detector_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """ONNX exports of the demo detector made with ultralytics' own options (static batch, no metadata)."""
    folder = tmp_path_factory.mktemp("exports")

    def export(**options: Any) -> Path:
        from ultralytics import YOLO

        from kubeinfer.runtime.models.offline import prepare_offline_ultralytics

        prepare_offline_ultralytics()
        copy = folder / f"{'-'.join(f'{k}{v}' for k, v in options.items())}.pt"
        copy.write_bytes(detector_model.read_bytes())
        return Path(YOLO(str(copy)).export(format="onnx", verbose=False, **options))

    return export


def test_a_static_batch_export_serves_batches_of_any_size(detector_model: Path,
                                                          exported: Callable[..., Path]) -> None:
    """ultralytics' default export takes one image at a time: a batch of 6 runs in pieces, same boxes."""
    from kubeinfer.runtime.models.yolo_onnx import YoloOnnxDetector

    static = YoloOnnxDetector(exported(imgsz=128, dynamic=False), "cpu", None)
    assert static._fixed_batch == 1
    dynamic = YoloOnnxDetector(choose_backend(detector_model, "onnx", "cpu", CACHE / "exports", None).path, "cpu",
                               None)
    _close(_boxes(static), _boxes(dynamic))


def test_a_file_without_metadata_is_served_from_its_shapes(detector_model: Path, tmp_path: Path) -> None:
    """An ONNX detector whose exporter wrote no metadata: classes counted from the head, named class0..."""
    import onnx

    from kubeinfer.runtime.models.yolo_onnx import YoloOnnxDetector

    source = choose_backend(detector_model, "onnx", "cpu", CACHE / "exports", None).path
    model = onnx.load(str(source))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    plain = YoloOnnxDetector(bare, "cpu", 128)
    assert plain.names == {0: "class0"} and plain.image_size == 128
    _close(_boxes(plain), _boxes(YoloOnnxDetector(source, "cpu", None)))


def test_a_static_export_refuses_another_input_size(exported: Callable[..., Path]) -> None:
    from kubeinfer.runtime.errors import StartupError
    from kubeinfer.runtime.models.yolo_onnx import YoloOnnxDetector

    static = exported(imgsz=128, dynamic=False)
    with pytest.raises(StartupError, match=r"--image-size 256: detector .* was exported for 128 px only"):
        YoloOnnxDetector(static, "cpu", 256)


def test_an_ultralytics_classifier_is_refused_as_a_detector_and_served_as_a_classifier(tmp_path: Path) -> None:
    """The export's metadata says what it is: the detector refuses it by name; the classifier takes its
    preprocessing (center crop, [0, 1], probabilities) and class names from it."""
    from ultralytics import YOLO

    from kubeinfer.runtime.errors import StartupError
    from kubeinfer.runtime.models.image_model import ImageModel
    from kubeinfer.runtime.models.offline import prepare_offline_ultralytics
    from kubeinfer.runtime.models.preprocessing import Preprocessing
    from kubeinfer.runtime.models.yolo_onnx import YoloOnnxDetector

    prepare_offline_ultralytics()
    cls = YOLO("yolov8n-cls.yaml")
    cls.model.names = {0: "cat", 1: "dog", **{i: f"c{i}" for i in range(2, 1000)}}
    weights = tmp_path / "cls.pt"
    cls.save(str(weights))
    onnx_file = Path(YOLO(str(weights)).export(format="onnx", imgsz=64, verbose=False))
    with pytest.raises(StartupError, match=r"is an ultralytics classify model; this task needs a detector"):
        YoloOnnxDetector(onnx_file, "cpu", None)
    model = ImageModel(onnx_file, "cpu", Preprocessing())
    assert model.class_names[:2] == ["cat", "dog"] and model.output_size == 1000
    assert (model.preprocessing.input_size, model.preprocessing.resize_mode, model.preprocessing.output) == (
        64, "center-crop", "probabilities")
    (probabilities,) = model.forward([model.preprocess(noisy("red", seed=1))])
    assert abs(float(probabilities.sum()) - 1.0) < 1e-3  # softmax in the model, not applied twice


@pytest.mark.parametrize(("decode_device", "device", "engine", "decodes"), [
    ("model", "cpu", "torch", True), ("auto", "cuda", "torch", True), ("auto", "cpu", "torch", False),
    ("cpu", "cuda", "torch", False), ("auto", "cuda", "onnx", False), ("model", "cpu", "onnx", False)])
def test_only_torch_decodes_jpegs_in_the_batch_step(decode_device: str, device: str, engine: str,
                                                    decodes: bool) -> None:
    """ONNX Runtime takes letterboxed pixels only: its JPEGs are decoded by OpenCV in the pool, even on a GPU."""
    from kubeinfer.runtime.engine.detector import decodes_on_device

    assert decodes_on_device(decode_device, device, engine) is decodes


def test_decoding_in_the_batch_step_is_refused_for_an_onnx_model(onnx_models: dict[str, list[str]]) -> None:
    from kubeinfer.runtime.commands.serve import parse
    from kubeinfer.runtime.config import ConfigError

    model = onnx_models["video"][1]  # the detector's ONNX export
    with pytest.raises(ConfigError, match=r"^--decode-device model decodes JPEGs with torch on the model's device, "
                                          r"but this model runs on ONNX Runtime"):
        parse(["--task", "detect", "--model", model, "--decode-device", "model"])
    auto = parse(["--task", "detect", "--model", model, "--device", "cuda"])
    assert auto.decode_device == "auto"  # allowed: an ONNX model's JPEGs then stay with OpenCV
