"""SIGTERM drains both transports at once: one --grace-period for gRPC calls and HTTP requests (uploads too)."""

from __future__ import annotations

import base64
import json
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
from classify_support import colour_models, solid, write_labels
from conftest import png_bytes
from runtime_support import RuntimeProcess, wait_for

from kubeinfer.v1 import inference_pb2 as pb
from kubeinfer.v1 import inference_pb2_grpc as pb_grpc

DELAY, GRACE = 1.0, 4.0


def in_flight(runtime: RuntimeProcess, protocol: str) -> float:
    for line in runtime.metrics().splitlines():
        if line.startswith("kubeinfer_requests_in_flight{") and f'protocol="{protocol}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


class Upload:
    """A JSON /v1/classify request over a raw socket: the headers and part of the body now, the rest on demand."""

    def __init__(self, runtime: RuntimeProcess) -> None:
        image = base64.b64encode(png_bytes(solid("red"))).decode()
        self.body = json.dumps({"images": [{"b64": image}]}).encode()
        self.sock = socket.create_connection(("127.0.0.1", runtime.http_port), timeout=30)
        head = (f"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(self.body)}\r\n\r\n").encode()
        self.sock.sendall(head + self.body[:len(self.body) // 2])

    def finish(self) -> int:
        """Send the rest of the body; the answer's HTTP status."""
        self.sock.sendall(self.body[len(self.body) // 2:])
        status = self.sock.recv(65536).split(b"\r\n", 1)[0]
        return int(status.split()[1])

    def close(self) -> None:
        self.sock.close()


def test_one_grace_period_for_both_transports(runtime_factory: Callable[..., RuntimeProcess],
                                              tmp_path: Path) -> None:
    labels = write_labels(tmp_path, "npy-onehot")
    runtime = runtime_factory("--task", "classify", "--model", str(colour_models().torchscript), "--labels",
                              str(labels), "--model-name", "draining", "--shutdown-delay", str(DELAY),
                              "--grace-period", str(GRACE))
    release = threading.Event()

    def stalled_clip() -> Iterator[pb.ClipFrame]:
        yield pb.ClipFrame(image=pb.Image(encoded=png_bytes(solid("red"))))
        release.wait(60)  # the client never finishes its clip: the call outlives the grace period

    channel = grpc.insecure_channel(runtime.grpc_target)
    clip = pb_grpc.InferenceStub(channel).ClassifyClip.future(stalled_clip())
    stuck = Upload(runtime)  # never finished: cut at the end of the grace period
    slow = Upload(runtime)  # finished within the grace period: answered
    try:
        wait_for(lambda: in_flight(runtime, "grpc") >= 1 and in_flight(runtime, "rest") >= 2,
                 "a gRPC call and two uploads in flight")
        signalled = time.monotonic()
        runtime.process.send_signal(signal.SIGTERM)
        time.sleep(DELAY + 1.0)  # the clock is the point: past the shutdown delay, well within the grace period
        assert slow.finish() == 200
        code = runtime.process.wait(DELAY + GRACE + 10)
        exited = time.monotonic() - signalled
    finally:
        release.set()
        stuck.close()
        slow.close()
        channel.close()
    assert code == 0
    assert clip.exception() is not None  # cancelled at the end of the grace period
    # in parallel: delay + one grace period (+1 s to exit), not delay + a grace period per transport
    assert exited <= DELAY + GRACE + 1.0, f"exited {exited:.2f}s after SIGTERM"
    assert exited >= DELAY + GRACE - 0.5, f"exited {exited:.2f}s after SIGTERM: the grace period was not given"
    assert "stopped" in runtime.logs()
