"""The checked-in generated stubs are exactly what grpcio-tools makes from the .proto files today."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

from runtime_support import REPO

PROTOS = REPO / "protos"


def test_checked_in_stubs_match_the_protos(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(PROTOS / "generate.py"), "--out", str(tmp_path)], check=True)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert generated, "protoc generated nothing"
    stale = [str(p) for p in generated if not filecmp.cmp(tmp_path / p, PROTOS / p, shallow=False)]
    assert stale == [], f"regenerate with `python protos/generate.py`: {stale}"
    checked_in = sorted(p.relative_to(PROTOS) for p in PROTOS.rglob("*_pb2*.py*") if "__pycache__" not in p.parts)
    assert checked_in == [p for p in generated if p.suffix in (".py", ".pyi")]


def test_stubs_import_under_the_kubeinfer_package() -> None:
    from kubeinfer.v1 import inference_pb2, inference_pb2_grpc

    service = inference_pb2.DESCRIPTOR.services_by_name["Inference"]
    assert service.full_name == "kubeinfer.v1.Inference"
    assert {"Detect", "GetModelInfo"} <= {m.name for m in service.methods}
    assert hasattr(inference_pb2_grpc, "InferenceStub")
