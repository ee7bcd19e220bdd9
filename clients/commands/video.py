"""Process a video file through a runtime serving the video task and write the processed video.

    kubeinfer video --target 127.0.0.1:8001 --ops edges:low=50:high=150,detect in.mp4 out.mp4

Operations run in the given order: grayscale, blur:ksize=K, edges:low=L:high=H,
resize:width=W:height=H, detect[:confidence=C:iou=I:max_detections=N],
faces[:scale=S:neighbors=N:min_size=PX]. By default the frames are decoded here and
streamed (ProcessVideo: any file size, frames go as JPEG); --upload sends the whole
file instead (ProcessVideoFile: the server decodes it; it must fit in one message).
The output's container follows its extension (.mp4: mp4v, .avi: MJPG) unless --fourcc
is given; its frame rate is the input's.
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FOURCC_BY_SUFFIX = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}
SEND_QUALITY = 95  # JPEG quality of the frames streamed to the server: near-lossless, a tenth of raw pixels
FALLBACK_FPS = 30.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="video file to process (anything OpenCV decodes: MP4, AVI, ...)")
    parser.add_argument("output", type=Path, help="processed video to write (.mp4 or .avi)")
    parser.add_argument("--target", default="127.0.0.1:8001", help="runtime gRPC address (default 127.0.0.1:8001)")
    parser.add_argument("--ops", default="", help="comma-separated operations, e.g. blur:ksize=5,edges,detect")
    parser.add_argument("--jpeg-quality", type=int, help="JPEG quality of the processed frames, 1..100 "
                                                         "(default: the runtime's --jpeg-quality)")
    parser.add_argument("--upload", action="store_true",
                        help="send the whole file for the server to decode (ProcessVideoFile) instead of streaming "
                             "frames decoded here")
    parser.add_argument("--fourcc", help="output codec as four characters (default by extension: mp4v or MJPG)")
    parser.add_argument("--timeout", type=float, help="deadline for the whole video in seconds (default none)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    try:
        import cv2
    except ImportError:
        return _fail("needs OpenCV to read and write videos: pip install 'kubeinfer[runtime]'", 2)
    import grpc
    from tqdm import tqdm

    from kubeinfer.clients import Client
    from kubeinfer.clients.types import ProcessedFrame
    from kubeinfer.clients.video import parse_ops

    try:
        ops = parse_ops(args.ops)
    except ValueError as exc:
        return _fail(f"--ops: {exc}", 2)
    fourcc = args.fourcc or FOURCC_BY_SUFFIX.get(args.output.suffix.lower())
    if fourcc is None or len(fourcc) != 4:
        return _fail(f"cannot tell the codec for {args.output.name}: use .mp4 or .avi, or give --fourcc", 2)
    if not args.input.is_file():
        return _fail(f"{args.input}: no such file", 2)
    capture = cv2.VideoCapture(str(args.input))
    if not args.upload and not capture.isOpened():
        return _fail(f"{args.input}: OpenCV cannot decode this file", 2)
    fps = capture.get(cv2.CAP_PROP_FPS) if capture.isOpened() else 0.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else 0
    if args.upload:
        capture.release()

    frames = _FrameSource(cv2, capture)
    writer = _Writer(cv2, args.output, fourcc, fps if fps > 0 else FALLBACK_FPS)
    failed = 0
    progress = tqdm(total=total or None, unit="frame", disable=args.no_progress, file=sys.stderr)
    try:
        with Client(args.target) as client:
            if args.upload:
                events: Iterator[Any] = client.process_video_file(args.input, ops=ops,
                                                                  jpeg_quality=args.jpeg_quality, timeout=args.timeout)
            else:
                events = client.process_video(iter(frames), ops=ops, stream_id=args.input.name,
                                              jpeg_quality=args.jpeg_quality, timeout=args.timeout)
            for event in events:
                if not isinstance(event, ProcessedFrame):
                    continue  # the summary of an upload: the counts are already known here
                progress.update(1)
                if event.error is not None:
                    failed += 1
                    progress.write(f"kubeinfer video: frame {event.sequence}: {event.error.code}: "
                                   f"{event.error.message}", file=sys.stderr)
                    continue
                writer.write(event.jpeg)
    except grpc.RpcError as exc:
        return _fail(f"{exc.code().name}: {exc.details()}", 1)
    except RuntimeError as exc:
        return _fail(str(exc), 1)
    finally:
        progress.close()
        frames.close()
        writer.close()
    if writer.frames == 0:
        return _fail("no frame came back processed; nothing written", 1)
    print(f"wrote {writer.frames} frames to {args.output}" + (f" ({failed} failed)" if failed else ""),
          file=sys.stderr)
    return 1 if failed else 0


class _FrameSource:
    """The input's frames as JPEG bytes, decoded one at a time as the stream asks for them.

    gRPC pulls them from its own thread, which may still be inside a read when the call fails and the command
    ends; releasing the capture under it (or exiting with OpenCV mid-read) aborts the process. The lock keeps
    ``close`` from releasing during a read, and a closed source yields nothing more.
    """

    def __init__(self, cv2: Any, capture: Any) -> None:
        self.cv2, self.capture = cv2, capture
        self.lock = threading.Lock()
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        while True:
            with self.lock:
                if self.closed:
                    return
                ok, frame = self.capture.read()
                if not ok:
                    return
                ok, data = self.cv2.imencode(".jpg", frame, [self.cv2.IMWRITE_JPEG_QUALITY, SEND_QUALITY])
            if not ok:
                raise RuntimeError("JPEG encoding of an input frame failed")
            yield data.tobytes()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.capture.release()


class _Writer:
    """cv2.VideoWriter opened on the first frame (the processed size may differ from the input's)."""

    def __init__(self, cv2: Any, path: Path, fourcc: str, fps: float) -> None:
        self.cv2, self.path, self.fourcc, self.fps = cv2, path, fourcc, fps
        self.writer: Any = None
        self.size: tuple[int, int] = (0, 0)
        self.frames = 0

    def write(self, jpeg: bytes) -> None:
        import numpy as np

        cv2 = self.cv2
        frame = cv2.imdecode(np.frombuffer(jpeg, dtype=np.uint8), cv2.IMREAD_COLOR)
        if frame is None:
            raise RuntimeError("the runtime sent a frame that is not a JPEG")
        height, width = frame.shape[:2]
        if self.writer is None:
            self.size = (width, height)
            self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*self.fourcc), self.fps, self.size)
            if not self.writer.isOpened():
                raise RuntimeError(f"cannot write {self.path} with codec {self.fourcc}")
        elif (width, height) != self.size:  # VideoWriter silently drops frames of another size
            frame = cv2.resize(frame, self.size)
        self.writer.write(frame)
        self.frames += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()


def _fail(message: str, code: int) -> int:
    print(f"kubeinfer video: {message}", file=sys.stderr)
    return code
