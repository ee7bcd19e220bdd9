"""Keep ultralytics from reaching the network: the runtime only loads what the user gives it."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def prepare_offline_ultralytics(config_dir: Path | None = None) -> None:
    """Set YOLO_OFFLINE and a writable YOLO_CONFIG_DIR holding a font, before ultralytics is imported.

    Ultralytics downloads Arial.ttf for plotting unless one is present; matplotlib ships DejaVuSans.
    """
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_VERBOSE", "False")
    if "YOLO_CONFIG_DIR" not in os.environ:
        os.environ["YOLO_CONFIG_DIR"] = str(config_dir or Path(tempfile.gettempdir()) / "kubeinfer-ultralytics")
    font_dir = Path(os.environ["YOLO_CONFIG_DIR"]) / "Ultralytics"
    target = font_dir / "Arial.ttf"
    if target.exists():
        return
    try:
        import matplotlib

        font_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf", target)
    except (ImportError, OSError):  # read-only filesystem or no matplotlib: plotting is not needed to serve
        pass
