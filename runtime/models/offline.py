"""Keep ultralytics from reaching the network: the runtime only loads what the user gives it, and never
installs anything for what a client sends."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def prepare_offline_ultralytics(config_dir: Path | None = None) -> None:
    """Set YOLO_OFFLINE and a writable YOLO_CONFIG_DIR holding a font, then import ultralytics and undo its
    patch of Pillow's ``Image.open``.

    Ultralytics downloads Arial.ttf for plotting unless one is present; matplotlib ships DejaVuSans.
    """
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_VERBOSE", "False")
    if "YOLO_CONFIG_DIR" not in os.environ:
        os.environ["YOLO_CONFIG_DIR"] = str(config_dir or Path(tempfile.gettempdir()) / "kubeinfer-ultralytics")
    _provide_font(Path(os.environ["YOLO_CONFIG_DIR"]) / "Ultralytics")
    restore_pillow_open()


def restore_pillow_open() -> None:
    """Give ``PIL.Image.open`` back to Pillow.

    Importing ultralytics replaces it with a wrapper that, on every file Pillow cannot identify, tries to
    pip-install pi-heif (a network call, or with YOLO_OFFLINE a warning and ~50 ms): a client sending junk
    bytes would cost that per image. The runtime takes JPEG, PNG, WebP and BMP only, all Pillow's own.
    """
    from PIL import Image
    from ultralytics.utils import patches

    original = getattr(patches, "_image_open", None)
    if original is not None and Image.open is getattr(patches, "image_open", None):
        Image.open = original


def _provide_font(font_dir: Path) -> None:
    target = font_dir / "Arial.ttf"
    if target.exists():
        return
    try:
        import matplotlib

        font_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf", target)
    except (ImportError, OSError):  # read-only filesystem or no matplotlib: plotting is not needed to serve
        pass
