"""Generated stubs of the Open Inference Protocol (protobuf package ``inference``; see protos/generate.py)."""
