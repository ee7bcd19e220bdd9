"""MkDocs hook: the InferenceService reference page is generated from the CRD at every build, never written by hand."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from crd_reference import reference

REFERENCE_PAGE = "reference/inferenceservice.md"


def on_files(files: Files, config: Any) -> Files:
    files.append(File.generated(config, REFERENCE_PAGE, content=reference()))
    return files
