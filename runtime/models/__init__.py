"""Model loading by format (ultralytics, TorchScript, ONNX), device placement and warm-up."""
