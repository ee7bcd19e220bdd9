"""Python clients for the kubeinfer runtime: gRPC (Client) and REST (RestClient)."""

from kubeinfer.clients.client import Client

__all__ = ["Client"]
