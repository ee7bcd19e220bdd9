"""The console script behaves like a Unix tool when its reader goes away (``kubeinfer predict ... | head``)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from runtime_support import EmptyDetect, in_process_runtime

from kubeinfer.cli import SIGPIPE_EXIT


@pytest.mark.asyncio(loop_scope="function")
async def test_predict_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    image = tmp_path / "a.jpg"
    image.write_bytes(b"\xff\xd8 bytes the empty detector never decodes")
    async with in_process_runtime(tmp_path, "--model-name", "m", task=EmptyDetect) as config:
        reader, writer = os.pipe()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kubeinfer", "predict", "--target", f"127.0.0.1:{config.grpc_port}", str(image),
            stdout=writer, stderr=subprocess.PIPE)
        os.close(writer)
        os.close(reader)  # nobody reads the command's output any more, as when `head` has exited
        assert process.stderr is not None
        errors = (await process.stderr.read()).decode()
        code = await asyncio.wait_for(process.wait(), 60)
    assert (code, errors) == (SIGPIPE_EXIT, "")
