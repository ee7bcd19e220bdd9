"""The kubeinfer inference runtime: transports over one data plane, task handlers, one dynamic batcher per model."""
