"""--frontends 2: two frontend processes on the same ports feed one model process through shared memory.

Real processes throughout: `kubeinfer serve --frontends 2` with the trained demo detector, compared with the
one-process runtime serving the same model, over gRPC and REST; with the colour classifier, whose answers
are known by construction; and every other task: stream windows, recognition galleries, video pipelines.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest
from classify_support import COLOURS, colour_models, expected_probabilities, noisy, scores, write_labels
from conftest import fresh_images, iou, jpeg_bytes, png_bytes
from prometheus_client.parser import text_string_to_metric_families
from recognize_support import ALL_BRANDS, BRANDS, embed, logo_encoders, queries
from runtime_support import CACHE, RuntimeProcess, wait_for
from video_support import moving_rectangle_clip

from kubeinfer.clients import Client
from kubeinfer.clients.rest import RestClient
from kubeinfer.clients.types import DetectResult, StreamFrame
from kubeinfer.runtime.commands.serve import parse
from kubeinfer.runtime.config import ConfigError, ServeConfig
from kubeinfer.runtime.engine import link
from kubeinfer.runtime.engine.ring import SlotRing
from kubeinfer.runtime.errors import Code, Overloaded
from kubeinfer.runtime.gallery import Gallery, save_npz
from kubeinfer.runtime.models.backend import choose_backend
from kubeinfer.runtime.models.yolo_io import Detection, Selection
from kubeinfer.v1 import inference_pb2 as pb
from kubeinfer.v1.inference_pb2_grpc import InferenceStub

FRONTENDS = ("--frontends", "2", "--shutdown-delay", "0", "--grace-period", "5")


@pytest.fixture(scope="module")
def frontends_runtime(runtime_factory: Callable[..., RuntimeProcess], detector_model: Path) -> RuntimeProcess:
    choose_backend(detector_model, "onnx", "cpu", CACHE / "exports", None)  # exported (with torch) here, not there
    return both_ready(runtime_factory("--task", "detect", "--model", str(detector_model), "--model-name", "rects",
                                      "--max-batch-delay-ms", "5", *FRONTENDS))


def both_ready(runtime: RuntimeProcess) -> RuntimeProcess:
    """/readyz answered by one frontend: wait for the other too (each is ready once the model process said hello)."""
    wait_for(lambda: runtime.logs().count("kubeinfer.runtime: serving ") == 2, "both frontends to serve")
    return runtime


def frontend_processes(runtime: RuntimeProcess) -> list[psutil.Process]:
    """The model process's children that listen on the runtime's gRPC port (its resource tracker does not)."""
    found = []
    for child in psutil.Process(runtime.pid).children():
        ports = {c.laddr.port for c in child.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
        if runtime.grpc_port in ports:
            found.append(child)
    return found


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples matching ``labels`` (the first matching line alone depended on the order in
    which the merged exposition lists, say, the gRPC and the REST Detect counters)."""
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))


def summary(results: list[DetectResult]) -> list[tuple[list[str], int, int, np.ndarray, list[float], list[int]]]:
    return [(r.defects, r.height, r.width, np.asarray([(d.box.x1, d.box.y1, d.box.x2, d.box.y2)
                                                       for d in r.detections]).reshape(-1, 4),
             [d.score for d in r.detections], [d.class_id for d in r.detections]) for r in results]


def assert_same_results(got: list[DetectResult], want: list[DetectResult]) -> None:
    assert len(got) == len(want)
    for (g_defects, g_h, g_w, g_boxes, g_scores, g_classes), (w_defects, w_h, w_w, w_boxes, w_scores, w_classes) in zip(
            summary(got), summary(want), strict=True):
        assert (g_defects, g_h, g_w, g_classes) == (w_defects, w_h, w_w, w_classes)
        np.testing.assert_allclose(g_boxes, w_boxes, atol=1e-3)
        np.testing.assert_allclose(g_scores, w_scores, atol=1e-4)


def test_two_frontends_listen_on_the_shared_ports(frontends_runtime: RuntimeProcess) -> None:
    frontends = frontend_processes(frontends_runtime)
    assert len(frontends) == 2
    for process in frontends:
        ports = {c.laddr.port for c in process.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
        assert {frontends_runtime.grpc_port, frontends_runtime.http_port} <= ports
    model_process = psutil.Process(frontends_runtime.pid)
    model_ports = {c.laddr.port for c in model_process.net_connections("tcp")}
    assert frontends_runtime.grpc_port not in model_ports  # the model process listens on no port


def test_no_process_loads_torch_for_a_model_onnx_runtime_runs(frontends_runtime: RuntimeProcess) -> None:
    """No frontend maps libtorch (the CUDA build's torch is ~800 MB a process), and neither does the model process
    while ONNX Runtime runs the model (the .pt's export was made once and cached)."""
    def maps_torch(process: psutil.Process) -> bool:
        return any("libtorch" in Path(m.path).name for m in process.memory_maps())

    assert not maps_torch(psutil.Process(frontends_runtime.pid))
    frontends = frontend_processes(frontends_runtime)
    assert len(frontends) == 2 and not any(maps_torch(p) for p in frontends)


def test_answers_equal_the_one_process_runtime(frontends_runtime: RuntimeProcess,
                                               detect_runtime: RuntimeProcess) -> None:
    samples = fresh_images(seed=31, count=10)
    images = [jpeg_bytes(s.pixels) if i % 2 else png_bytes(s.pixels) for i, s in enumerate(samples)]
    with Client(frontends_runtime.grpc_target) as many, Client(detect_runtime.grpc_target) as one:
        for params in ({}, {"confidence": 0.05, "max_detections": 2}, {"classes": [0], "iou": 0.3}):
            want = one.detect(images, **params)
            assert sum(len(r.detections) for r in want) > 0
            assert_same_results(many.detect(images, **params), want)
            for image, expected in zip(images[:3], want[:3], strict=True):  # one image per request, too
                assert_same_results(many.detect([image], **params), [expected])
        by_rest, status = RestClient(frontends_runtime.http_url).detect(images[:4])  # the shared HTTP port
        assert status == 200 and isinstance(by_rest, list)
        assert_same_results(by_rest, one.detect(images[:4]))


def test_connections_spread_over_both_frontends_and_metrics_add_up(frontends_runtime: RuntimeProcess) -> None:
    image = jpeg_bytes(fresh_images(seed=32, count=1)[0].pixels)
    before = frontends_runtime.metrics()
    channels = [grpc.insecure_channel(frontends_runtime.grpc_target, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(12)]
    try:
        for channel in channels:
            response = InferenceStub(channel).Detect(pb.DetectRequest(images=[pb.Image(encoded=image)]), timeout=30)
            assert len(response.results) == 1
        per_frontend = [sum(1 for c in process.net_connections("tcp")
                            if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == frontends_runtime.grpc_port)
                        for process in frontend_processes(frontends_runtime)]
        assert len(per_frontend) == 2 and min(per_frontend) >= 1, per_frontend  # 2 in 4096 to fail by chance
    finally:
        for channel in channels:
            channel.close()
    after = frontends_runtime.metrics()  # merged over both frontends and the model process
    served = (metric(after, "kubeinfer_requests_total", protocol="grpc", rpc="Detect", code="OK")
              - metric(before, "kubeinfer_requests_total", protocol="grpc", rpc="Detect", code="OK"))
    assert served == 12
    assert (metric(after, "kubeinfer_images_processed_total") - metric(before, "kubeinfer_images_processed_total")
            == 12)
    batched = metric(after, "kubeinfer_batch_size_sum") - metric(before, "kubeinfer_batch_size_sum")
    assert batched == 12  # the model process's batcher, seen through a frontend's /metrics
    assert metric(after, "kubeinfer_model_ready") == 1
    assert 'kubeinfer_build_info{backend="onnx"' in after


def test_bad_input_gets_its_status_and_the_frontends_keep_serving(frontends_runtime: RuntimeProcess) -> None:
    good = jpeg_bytes(fresh_images(seed=33, count=1)[0].pixels)
    with Client(frontends_runtime.grpc_target, retries=False) as client:
        with pytest.raises(grpc.RpcError) as corrupt:
            client.detect([good, b"\xff\xd8\xff\xe0 not really a jpeg"])
        assert corrupt.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "image 1" in corrupt.value.details()
        with pytest.raises(grpc.RpcError) as masks:
            client.detect([good], return_masks=True)
        assert masks.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as classes:
            client.detect([good], classes=[7])
        assert classes.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert len(client.detect([good] * 3)) == 3


def test_full_slots_refuse_before_decoding_and_free_again(runtime_factory: Callable[..., RuntimeProcess],
                                                          detector_model: Path) -> None:
    runtime = both_ready(runtime_factory("--task", "detect", "--model", str(detector_model), "--max-batch-size",
                                         "2", "--frontend-queue-size", "2", *FRONTENDS))
    image = jpeg_bytes(fresh_images(seed=34, count=1)[0].pixels)
    with Client(runtime.grpc_target, retries=False) as client:
        with pytest.raises(grpc.RpcError) as full:
            client.detect([image] * 3)
        assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--frontend-queue-size" in full.value.details()
        for _ in range(6):  # every answered request gave its slots back
            assert len(client.detect([image] * 2)) == 2
    assert runtime.terminate() == 0


def test_masks_are_drawn_in_the_model_process_as_in_one_process(runtime_factory: Callable[..., RuntimeProcess],
                                                                segmentation_model: Path) -> None:
    many = runtime_factory("--task", "detect", "--model", str(segmentation_model), *FRONTENDS, wait=False)
    one = runtime_factory("--task", "detect", "--model", str(segmentation_model), "--shutdown-delay", "0")
    both_ready(many.wait_ready())
    images = [png_bytes(s.pixels) for s in fresh_images(seed=35, count=4)]
    with Client(many.grpc_target) as a, Client(one.grpc_target) as b:
        got, want = a.detect(images, return_masks=True), b.detect(images, return_masks=True)
    assert_same_results(got, want)
    polygons = [d.mask for r in want for d in r.detections]
    assert polygons and all(polygons)
    assert [d.mask for r in got for d in r.detections] == polygons


def test_sigterm_drains_every_process_and_exits_zero(runtime_factory: Callable[..., RuntimeProcess],
                                                     detector_model: Path) -> None:
    runtime = both_ready(runtime_factory("--task", "detect", "--model", str(detector_model), *FRONTENDS,
                                         "--shutdown-delay", "1"))
    frontends = frontend_processes(runtime)
    image = jpeg_bytes(fresh_images(seed=36, count=1)[0].pixels)
    with Client(runtime.grpc_target) as client:
        client.detect([image])  # connected
        calls = [client.stub.Detect.future(pb.DetectRequest(images=[pb.Image(encoded=image)] * 16), timeout=30)
                 for _ in range(4)]
        runtime.process.send_signal(signal.SIGTERM)
        assert [len(call.result().results) for call in calls] == [16] * 4  # in flight at SIGTERM: answered
    assert runtime.terminate() == 0
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in frontends)
    assert "model-process kubeinfer.runtime.model-process: stopped" in runtime.log_path.read_text()


def test_a_frontend_that_dies_stops_the_runtime_with_an_error(runtime_factory: Callable[..., RuntimeProcess],
                                                               detector_model: Path) -> None:
    runtime = both_ready(runtime_factory("--task", "detect", "--model", str(detector_model), *FRONTENDS))
    first, second = frontend_processes(runtime)
    os.kill(first.pid, signal.SIGKILL)
    wait_for(lambda: runtime.process.poll() is not None, "the model process to exit", timeout=30)
    assert runtime.process.returncode == 1
    wait_for(lambda: not second.is_running() or second.status() == psutil.STATUS_ZOMBIE, "the other frontend")
    assert re.search(r"kubeinfer-frontend-\d \(pid \d+\) exited with code -9", runtime.logs())


def test_frontends_stop_when_the_model_process_is_killed(runtime_factory: Callable[..., RuntimeProcess],
                                                        detector_model: Path) -> None:
    """No orphans: a frontend whose link to the model process breaks fails what is in flight and exits."""
    runtime = both_ready(runtime_factory("--task", "detect", "--model", str(detector_model), *FRONTENDS))
    frontends = frontend_processes(runtime)
    runtime.process.kill()
    for process in frontends:
        wait_for(lambda process=process: not process.is_running() or process.status() == psutil.STATUS_ZOMBIE,
                 f"frontend {process.pid} to exit", timeout=30)
    assert "the model process closed the link; this frontend stops" in runtime.logs()


def test_a_model_that_cannot_start_stops_the_frontends(runtime_factory: Callable[..., RuntimeProcess],
                                                       detector_model: Path) -> None:
    """Slots that cannot fit in /dev/shm are refused at start with the sizes (not met with a SIGBUS later), and
    the frontends waiting for the model exit on their own."""
    runtime = runtime_factory("--task", "detect", "--model", str(detector_model), "--frontend-queue-size",
                              str(10 ** 7), *FRONTENDS, wait=False)
    wait_for(lambda: runtime.process.poll() is not None, "the runtime to give up", timeout=120)
    assert runtime.process.returncode == 1
    logs = runtime.logs()
    assert re.search(r"need \d+ MiB of shared memory, /dev/shm has \d+ MiB free", logs), logs
    spawned = re.findall(r"started kubeinfer-frontend-\d \(pid (\d+)\)", logs)
    assert len(spawned) == 2, logs
    for pid in spawned:
        wait_for(lambda pid=pid: not psutil.pid_exists(int(pid)) or psutil.Process(int(pid)).status()
                 == psutil.STATUS_ZOMBIE, f"frontend pid {pid} to exit")
    assert "restarts whole" not in logs  # a failed start is not reported as a frontend's death


def serve_config(*args: str) -> ServeConfig:
    return parse(args)


def test_classify_behind_frontends_answers_as_its_model_does(runtime_factory: Callable[..., RuntimeProcess],
                                                             tmp_path: Path) -> None:
    """The frontends decode and resize, the model process runs the classifier: the probabilities the model's own
    preprocessing gives, for encoded images and raw pixels, in one request or a clip; bad input is the client's
    error and the frontends keep serving; SIGHUP reloads the labels in every frontend; only the model process
    loads torch."""
    labels = write_labels(tmp_path, "txt")
    runtime = both_ready(runtime_factory("--task", "classify", "--model", str(colour_models().torchscript),
                                         "--labels", str(labels), "--top-k", "3", "--max-batch-delay-ms", "5",
                                         *FRONTENDS))
    pictures = [noisy(colour, seed) for seed, colour in enumerate(COLOURS * 3, start=60)]
    with Client(runtime.grpc_target, retries=False) as client:
        info = client.model_info()
        assert (info.task, info.labels, info.model_format) == ("classify", COLOURS, "torchscript")
        for images in ([png_bytes(p) for p in pictures], pictures, pictures[:1]):  # encoded, raw; batched, alone
            got = client.classify(images)
            assert len(got) == len(images)
            for result, picture, colour in zip(got, pictures, COLOURS * 3, strict=False):
                assert result.label == colour
                np.testing.assert_allclose(scores(result), expected_probabilities(picture), atol=1e-5)
        clip = client.classify_clip(iter([png_bytes(p) for p in pictures[:4]]))
        assert clip.frames == 4
        np.testing.assert_allclose(scores(clip.result), np.mean([expected_probabilities(p) for p in pictures[:4]],
                                                                axis=0), atol=1e-5)
        with pytest.raises(grpc.RpcError) as corrupt:
            client.classify([png_bytes(pictures[0]), b"\x89PNG not really"])
        assert corrupt.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "image 1" in corrupt.value.details()
        with pytest.raises(grpc.RpcError) as top_k:
            client.classify(pictures[:1], top_k=0)
        assert top_k.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [r.label for r in client.classify(pictures[:3])] == COLOURS
    by_rest, status = RestClient(runtime.http_url).classify(pictures[:2])
    assert status == 200 and isinstance(by_rest, list) and [r.label for r in by_rest] == COLOURS[:2]
    write_labels(tmp_path, "txt", ["rouge", "vert", "bleu"])
    runtime.process.send_signal(signal.SIGHUP)  # the model process passes it on: each frontend reloads its labels
    wait_for(lambda: runtime.logs().count("reloaded 3 labels") == 2, "both frontends to reload their labels")
    with Client(runtime.grpc_target) as client:
        assert [r.label for r in client.classify(pictures[:3])] == ["rouge", "vert", "bleu"]
    frontends = frontend_processes(runtime)
    assert len(frontends) == 2 and not any(
        "libtorch" in Path(m.path).name for p in frontends for m in p.memory_maps())
    assert runtime.terminate() == 0


def test_every_task_runs_behind_frontends_on_fixed_ports(detector_model: Path, tmp_path: Path) -> None:
    model = tmp_path / "model.pt"
    model.write_bytes(b"x")
    for task in ("classify", "stream-classify", "recognize"):
        assert serve_config("--task", task, "--model", str(model), "--frontends", "2").frontends == 2
    assert serve_config("--task", "video", "--frontends", "3").frontends == 3
    with pytest.raises(ConfigError, match="fixed --grpc-port and --http-port"):
        serve_config("--model", str(detector_model), "--frontends", "2", "--grpc-port", "0")
    with pytest.raises(ConfigError, match="--frontend-queue-size must be >= --max-batch-size"):
        serve_config("--model", str(detector_model), "--frontends", "2", "--frontend-queue-size", "4")
    assert serve_config("--model", str(detector_model), "--frontends", "2").frontends == 2


def own_connections(target: str, count: int) -> list[Client]:
    """Clients with a connection each, so the kernel spreads them over the frontends (2 in 2**(count-1) to land on
    one frontend by chance)."""
    return [Client(target, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(count)]


def test_stream_windows_stay_in_the_frontend_that_owns_the_call(runtime_factory: Callable[..., RuntimeProcess],
                                                                 tmp_path: Path) -> None:
    """Calls on connections spread over both frontends, each with the same stream ids: every call's averages are
    its own window's (no frame of another call, on this frontend or the other, mixes in), while every frame runs
    through the one model process."""
    labels = write_labels(tmp_path, "txt")
    runtime = both_ready(runtime_factory("--task", "stream-classify", "--model", str(colour_models().onnx),
                                         "--labels", str(labels), "--window", "3", "--max-batch-delay-ms", "5",
                                         *FRONTENDS))
    calls = [[noisy(COLOURS[(call + i // 2) % 3], 70 + 10 * call + i) for i in range(8)] for call in range(6)]
    clients = own_connections(runtime.grpc_target, len(calls))
    try:
        def run(call: int) -> list[str]:
            frames = [StreamFrame(f, stream_id=f"cam-{i % 2}") for i, f in enumerate(calls[call])]
            return [p.averaged.label for p in clients[call].stream_classify(frames)]

        with ThreadPoolExecutor(len(calls)) as pool:
            averaged = list(pool.map(run, range(len(calls))))
        per_frontend = [sum(1 for c in process.net_connections("tcp")
                            if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == runtime.grpc_port)
                        for process in frontend_processes(runtime)]
    finally:
        for client in clients:
            client.close()
    assert min(per_frontend) >= 1, per_frontend  # both frontends held calls
    for frames, got in zip(calls, averaged, strict=True):
        want = []
        for i in range(len(frames)):  # the window of this call's stream cam-(i % 2): its last 3 frames
            own = [expected_probabilities(frames[j]) for j in range(i % 2, i + 1, 2)][-3:]
            want.append(COLOURS[int(np.argmax(np.mean(own, axis=0)))])
        assert got == want
    assert metric(runtime.metrics(), "kubeinfer_frames_processed_total") == sum(len(c) for c in calls)
    assert runtime.terminate() == 0


def test_recognize_searches_the_model_process_gallery_and_follows_its_reloads(
        runtime_factory: Callable[..., RuntimeProcess], tmp_path: Path) -> None:
    """The gallery lives with the encoder in the model process: both frontends answer from it, and when the
    embeddings file changes the model process reloads it once and tells every frontend (GetModelInfo)."""
    encoders, path = logo_encoders(), tmp_path / "brands.npz"
    encoder = encoders.onnx  # the same weights as the TorchScript file the vectors are made with

    def write_gallery(brands: list[str]) -> None:
        save_npz(Gallery(embed(encoders.torchscript, [ALL_BRANDS[b]() for b in brands]), brands, "test"), path)

    write_gallery(list(BRANDS))
    runtime = both_ready(runtime_factory("--task", "recognize", "--model", str(encoder), "--embeddings", str(path),
                                         "--similarity-threshold", "0.7", *FRONTENDS))
    names = list(ALL_BRANDS)
    images = [queries(ALL_BRANDS[name]())["jpeg"] for name in names]
    clients = own_connections(runtime.grpc_target, 8)
    try:
        for client in clients:
            assert [r.label for r in client.recognize(images)] == [n if n in BRANDS else "unknown" for n in names]
            assert client.model_info().gallery_size == len(BRANDS)
        write_gallery(names)  # + the new brand: polled by the model process every 2 s
        wait_for(lambda: all(c.model_info().gallery_size == len(names) for c in clients), "every frontend to "
                 "report the reloaded gallery", timeout=30)
        for client in clients:
            assert [r.label for r in client.recognize(images)] == names
            assert client.model_info().gallery_labels == sorted(names)
    finally:
        for client in clients:
            client.close()
    assert runtime.logs().count("gallery reloaded") == 1  # in the model process, once for every frontend
    assert runtime.terminate() == 0


def test_video_pipelines_run_in_the_frontends_and_detect_in_the_model_process(
        runtime_factory: Callable[..., RuntimeProcess], detector_model: Path) -> None:
    """A stream's pipeline runs in the frontend that owns the call; its detect operation's frames cross to the
    model process. Without a model, the frontends run the OpenCV operations alone."""
    choose_backend(detector_model, "onnx", "cpu", CACHE / "exports", None)  # exported (with torch) here, not there
    with_model = runtime_factory("--task", "video", "--model", str(detector_model), "--max-batch-delay-ms", "5",
                                 *FRONTENDS, wait=False)
    plain = runtime_factory("--task", "video", *FRONTENDS, wait=False)
    both_ready(with_model.wait_ready())
    both_ready(plain.wait_ready())
    clip = moving_rectangle_clip(count=24, seed=13)
    clients = own_connections(with_model.grpc_target, 4)
    try:
        with ThreadPoolExecutor(len(clients)) as pool:
            streams = list(pool.map(lambda c: list(c.process_video([f.pixels for f in clip], ops=["blur", "detect"])),
                                    clients))
    finally:
        for client in clients:
            client.close()
    for out in streams:
        assert [f.sequence for f in out] == list(range(len(clip)))
        matches = [max((iou(f.box, (d.box.x1, d.box.y1, d.box.x2, d.box.y2)) for d in o.detections), default=0.0)
                   for f, o in zip(clip, out, strict=True)]
        assert sum(m >= 0.5 for m in matches) >= len(clip) - 2, np.round(matches, 2).tolist()
    with Client(plain.grpc_target, retries=False) as client:
        edges = list(client.process_video([f.pixels for f in clip[:3]], ops=["edges"]))
        assert [f.error for f in edges] == [None] * 3 and all(f.jpeg for f in edges)
        with pytest.raises(grpc.RpcError) as failure:
            list(client.process_video([clip[0].pixels], ops=["detect"]))
        assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert with_model.terminate() == 0 and plain.terminate() == 0


def test_a_ring_hands_out_slots_all_or_none_and_shares_its_pixels() -> None:
    ring = SlotRing.create(3, (4, 4, 3))
    other = SlotRing.attach(ring.name, 3, (4, 4, 3))  # as the other process sees it
    try:
        taken = ring.take(2)
        assert taken is not None and len(set(taken)) == 2
        assert ring.take(2) is None and ring.free == 1  # all or none
        ring.images[taken[0]] = 7
        assert (other.images[taken[0]] == 7).all() and not other.images[taken[1]].any()
        ring.give_back(taken)
        assert ring.free == 3
    finally:
        other.close()
        ring.close()


def test_link_messages_cross_a_socket_whole() -> None:
    async def exchange() -> list[object]:
        served: list[object] = []
        done = asyncio.Event()

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while (message := await link.receive(reader)) is not None:
                served.append(message)
            writer.close()
            done.set()

        server = await asyncio.start_unix_server(echo, path=path)
        _, writer = await asyncio.open_unix_connection(path)
        selection = Selection(0.25, 0.45, 300, (0,), False)
        await asyncio.gather(*(link.send(writer, link.BatchRequest(i, [link.LinkItem(i, None, 0, 480, 640, selection)]))
                               for i in range(50)))
        await link.send(writer, link.BatchReply(7, [[Detection(1.0, 2.0, 3.0, 4.0, 0.9, 0, "rectangle")],
                                                    link.LinkError.of(Overloaded("full")),
                                                    np.array([0.25, 0.75], np.float32)]))
        writer.close()
        await done.wait()
        server.close()
        return served

    path = f"/tmp/kubeinfer-link-test-{os.getpid()}.sock"
    try:
        messages = asyncio.run(exchange())
    finally:
        if os.path.exists(path):
            os.unlink(path)
    assert [m.id for m in messages[:50]] == list(range(50))  # type: ignore[attr-defined]
    reply = messages[50]
    assert isinstance(reply, link.BatchReply) and reply.results[0][0].score == 0.9  # type: ignore[index]
    error = reply.results[1].error()  # type: ignore[union-attr]
    assert error.code == Code.RESOURCE_EXHAUSTED and error.http_status == 429 and error.retry_after_s is not None
    probabilities = reply.results[2]
    assert isinstance(probabilities, np.ndarray) and probabilities.dtype == np.float32
    assert probabilities.tolist() == [0.25, 0.75]


def test_a_cancelled_request_keeps_its_slots_until_the_model_process_answers() -> None:
    """The model process may still be reading a cancelled request's slots: they return with its answer only."""
    from kubeinfer.runtime.engine.detector import DetectorItems
    from kubeinfer.runtime.engine.remote import RemoteEngine
    from kubeinfer.runtime.models.yolo_io import Letterboxed

    async def scenario(path: str) -> list[int]:
        received: asyncio.Queue[link.BatchRequest] = asyncio.Queue()
        links: list[asyncio.StreamWriter] = []

        async def model_process(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            links.append(writer)
            while (request := await link.receive(reader)) is not None:
                await received.put(request)  # type: ignore[arg-type]

        server = await asyncio.start_unix_server(model_process, path=path)
        reader, writer = await asyncio.open_unix_connection(path)
        ring = SlotRing.create(4, (8, 8, 3))
        lost: list[bool] = []
        engine = RemoteEngine(None, DetectorItems(), ring, reader, writer, on_lost=lambda: lost.append(True))
        engine.start()
        free = [ring.free]
        image = Letterboxed(np.full((8, 8, 3), 9, np.uint8), 8, 8, Selection(0.25, 0.45, 10))
        reservation = engine.reserve(3)
        call = asyncio.ensure_future(engine.infer([image, image, image], reservation))
        request = await received.get()
        assert [int(ring.images[item.slot].max()) for item in request.items] == [9, 9, 9]  # pixels in the slots
        reservation.__exit__(None, None, None)
        call.cancel()
        await asyncio.sleep(0.05)
        free.append(ring.free)  # cancelled, not answered: still taken
        await link.send(links[0], link.BatchReply(request.id, [[], [], []]))
        await asyncio.sleep(0.05)
        free.append(ring.free)  # answered: back
        with pytest.raises(Overloaded, match="--frontend-queue-size"):
            engine.reserve(5)
        links[0].close()
        await asyncio.sleep(0.05)
        free.append(len(lost))  # the link closed under it: the frontend is told, once
        engine.stop()
        server.close()
        ring.close()
        return free

    path = f"/tmp/kubeinfer-remote-test-{os.getpid()}.sock"
    try:
        assert asyncio.run(scenario(path)) == [4, 1, 4, 1]
    finally:
        if os.path.exists(path):
            os.unlink(path)
