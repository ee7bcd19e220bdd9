"""The runtime's transports: gRPC and HTTP, native and Open Inference Protocol; parse and encode only."""
