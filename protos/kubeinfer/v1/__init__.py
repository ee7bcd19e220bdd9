"""Generated gRPC stubs for kubeinfer.v1 (see protos/generate.py; never edit by hand)."""
