"""KServe's Python ModelServer serving the benchmark classifier (run in the kserve venv).

    python serve_kserve.py --model classifier.pt --name classifier --http_port P --grpc_port Q [kserve flags]

Open Inference Protocol v2 over gRPC: input "pixels" UINT8 [N,224,224,3] ->
"scores" FP32 [N,5], "classes" INT32 [N,5]. KServe has no batcher inside the
Python server (its batcher is a separate Kubernetes sidecar), so each request is
one forward pass. KServe listens on every interface by default ("0.0.0.0" for
REST, "[::]" for gRPC); ``_loopback_only`` rebinds both to 127.0.0.1 before it starts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _loopback_only() -> None:
    """Make uvicorn and grpc.aio servers created from here on listen on 127.0.0.1 only."""
    import grpc.aio
    import uvicorn

    config_init = uvicorn.Config.__init__

    def loopback_config(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        kwargs["host"] = "127.0.0.1"
        config_init(self, *args, **kwargs)

    uvicorn.Config.__init__ = loopback_config

    make_server = grpc.aio.server

    def loopback_server(*args, **kwargs):  # type: ignore[no-untyped-def]
        server = make_server(*args, **kwargs)
        add_port = server.add_insecure_port
        server.add_insecure_port = lambda address: add_port("127.0.0.1:" + address.rsplit(":", 1)[1])
        return server

    grpc.aio.server = loopback_server


def main() -> None:
    ours = argparse.ArgumentParser(add_help=False)
    ours.add_argument("--model", required=True)
    ours.add_argument("--name", default="classifier")
    args, kserve_args = ours.parse_known_args()
    sys.argv = [sys.argv[0], *kserve_args]  # kserve parses sys.argv itself, at import
    _loopback_only()

    import kserve
    import numpy as np
    from classifier import Classifier
    from kserve import InferOutput, InferRequest, InferResponse

    class ClassifierModel(kserve.Model):
        def __init__(self, name: str, path: str) -> None:
            super().__init__(name)
            self.classifier = Classifier(path)
            self.ready = True

        async def predict(self, payload, headers=None, response_headers=None):  # type: ignore[no-untyped-def]
            if not isinstance(payload, InferRequest):
                raise ValueError("this benchmark model speaks the Open Inference Protocol (v2) only")
            pixels = payload.inputs[0].as_numpy().astype(np.uint8, copy=False)
            scores, classes = self.classifier.predict(pixels)
            outputs = []
            for name, value, datatype in (("scores", scores, "FP32"), ("classes", classes, "INT32")):
                output = InferOutput(name=name, shape=list(value.shape), datatype=datatype)
                output.set_data_from_numpy(value, binary_data=bool(payload.from_grpc))
                outputs.append(output)
            return InferResponse(response_id=payload.id or "", model_name=self.name, infer_outputs=outputs)

    kserve.ModelServer().start([ClassifierModel(args.name, args.model)])


if __name__ == "__main__":
    main()
