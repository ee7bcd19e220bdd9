"""`kubeinfer video IN OUT` against a served video task: streamed and uploaded, written with cv2.VideoWriter."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from runtime_support import REPO, RuntimeProcess, runtime_env
from video_support import moving_rectangle_clip, read_video, write_video


@pytest.fixture(scope="module")
def runtime(runtime_factory: Callable[..., RuntimeProcess]) -> Iterator[RuntimeProcess]:
    runtime = runtime_factory("--task", "video", "--model-name", "video-cli", "--max-frames-in-flight", "4")
    yield runtime
    runtime.terminate()  # free its memory for the rest of the suite


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    frames = [f.pixels for f in moving_rectangle_clip(count=30, size=128)]
    return write_video(tmp_path_factory.mktemp("clips") / "clip.avi", frames, "MJPG", fps=24.0)


def video_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kubeinfer", "video", *args], capture_output=True, text=True,
                          env=runtime_env(), cwd=REPO, timeout=120)


def test_streams_a_file_and_writes_the_processed_video(runtime: RuntimeProcess, clip_file: Path,
                                                       tmp_path: Path) -> None:
    out = tmp_path / "edges.avi"
    done = video_cli("--target", runtime.grpc_target, "--ops", "blur:ksize=3,edges:low=50:high=150", str(clip_file),
                     str(out))
    assert done.returncode == 0, done.stderr
    assert "wrote 30 frames" in done.stderr
    assert "30/30" in done.stderr  # the progress bar reached the end
    frames, fps = read_video(out)
    originals, _ = read_video(clip_file)
    assert len(frames) == 30 and fps == 24.0
    for frame, original in zip(frames, originals, strict=True):
        assert frame.shape == (128, 128, 3)
        expected = cv2.Canny(cv2.GaussianBlur(cv2.cvtColor(original, cv2.COLOR_BGR2GRAY), (3, 3), 0), 50, 150)
        got = (frame[:, :, 0] >= 128).astype(np.uint8)
        # Two JPEG passes and the MJPG writer move some edges by a pixel: compare within one pixel both ways.
        near = np.ones((3, 3), np.uint8)
        found = np.count_nonzero(expected & cv2.dilate(got, near))
        placed = np.count_nonzero(got & cv2.dilate((expected > 0).astype(np.uint8), near))
        assert found >= 0.85 * np.count_nonzero(expected)
        assert placed >= 0.85 * np.count_nonzero(got)
        assert np.count_nonzero(got) > 50


def test_uploads_a_file_with_upload(runtime: RuntimeProcess, tmp_path: Path) -> None:
    source = write_video(tmp_path / "clip.mp4", [f.pixels for f in moving_rectangle_clip(count=20, size=96)], "mp4v",
                         fps=10.0)
    out = tmp_path / "small.mp4"
    done = video_cli("--target", runtime.grpc_target, "--upload", "--no-progress", "--ops", "grayscale,resize:width=48",
                     str(source), str(out))
    assert done.returncode == 0, done.stderr
    frames, fps = read_video(out)
    assert len(frames) == 20 and fps == 10.0
    assert all(f.shape == (48, 48, 3) for f in frames)
    assert np.abs(frames[0][:, :, 0].astype(int) - frames[0][:, :, 2]).max() < 12  # grey


def test_bad_ops_and_refusals_exit_non_zero_with_a_message(runtime: RuntimeProcess, clip_file: Path,
                                                           tmp_path: Path) -> None:
    out = tmp_path / "never.avi"
    local = video_cli("--target", runtime.grpc_target, "--ops", "edges:low", str(clip_file), str(out))
    assert local.returncode == 2
    assert "--ops: operation 'edges:low': parameter 'low' is not NAME=NUMBER" in local.stderr
    refused = video_cli("--target", runtime.grpc_target, "--no-progress", "--ops", "detect", str(clip_file), str(out))
    assert refused.returncode == 1
    assert "FAILED_PRECONDITION" in refused.stderr and "detect needs a runtime started with --model" in refused.stderr
    codec = video_cli("--target", runtime.grpc_target, str(clip_file), str(tmp_path / "out.webm"))
    assert codec.returncode == 2 and "--fourcc" in codec.stderr
    assert not out.exists()
