"""Python clients for the kubeinfer runtime: gRPC (Client) and REST (RestClient)."""

from kubeinfer.clients.affinity import NoEndpoints, StreamRouter
from kubeinfer.clients.client import Client
from kubeinfer.clients.rest import RestClient, RestError

__all__ = ["Client", "NoEndpoints", "RestClient", "RestError", "StreamRouter"]
