"""Junk uploads never make ultralytics try to install anything: the runtime gives Pillow's Image.open back."""

from __future__ import annotations

import subprocess
import sys

from runtime_support import runtime_env

PROBE = """
from kubeinfer.runtime.models.offline import prepare_offline_ultralytics
prepare_offline_ultralytics()
import ultralytics  # noqa: F401  (already imported: nothing is patched again)
from PIL import Image
from kubeinfer.runtime.images import ImageInput, declared_pixels
print(Image.open.__module__, declared_pixels(ImageInput(encoded=b"not an image at all" * 50)))
"""


def test_an_unidentifiable_upload_is_refused_by_pillow_alone() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120,
                          env=runtime_env())
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["PIL.Image", "0"], done.stdout + done.stderr
    assert "requirements" not in done.stdout + done.stderr  # ultralytics' pi-heif auto-install never ran
