"""The Open Inference Protocol (KServe v2) over gRPC and REST, mapped onto the data plane."""
