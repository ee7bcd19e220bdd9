"""Replicas of one service for the balancing and affinity tests: real `kubeinfer serve` processes on distinct
loopback addresses (127.0.0.2, .3, ...) and one shared gRPC port, as pods behind a headless Service are."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from classify_support import colour_models, write_labels
from prometheus_client.parser import text_string_to_metric_families
from runtime_support import RuntimeProcess, free_port

from kubeinfer.runtime.metrics import REQUESTS

WINDOW = 4


class Replica(RuntimeProcess):
    """A stream-classify runtime of the colour model listening on ``host`` (gRPC on ``grpc_port``)."""

    def __init__(self, host: str, grpc_port: int, folder: Path, *extra: str) -> None:
        labels = write_labels(folder / "labels", "json-index-map")
        super().__init__(["--task", "stream-classify", "--model", str(colour_models().torchscript), "--labels",
                          str(labels), "--window", str(WINDOW), "--model-name", "colours", "--top-k", "3",
                          "--max-batch-delay-ms", "1", "--shutdown-delay", "0", "--workers", "1",
                          *extra, "--host", host, "--grpc-port", str(grpc_port)],
                         folder / f"runtime-{host}.log")
        self.host = host
        self.grpc_port = grpc_port

    @property
    def grpc_target(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def served(self, rpc: str) -> int:
        """Calls of ``rpc`` this replica answered OK (its requests counter)."""
        total = 0.0
        for family in text_string_to_metric_families(self.metrics()):
            for sample in family.samples:
                if (sample.name == REQUESTS and sample.labels.get("rpc") == rpc
                        and sample.labels.get("code") == "OK"):
                    total += sample.value
        return int(total)


class ReplicaSet:
    """Replicas started on 127.0.0.2, .3, ... with one gRPC port; all stopped on close."""

    def __init__(self, folder: Path, *extra: str, port: int | None = None) -> None:
        self.folder = folder
        self.extra = extra
        self.port = port or free_port()
        self.replicas: list[Replica] = []

    def start(self, count: int) -> list[Replica]:
        """``count`` more replicas, started together and waited for."""
        fresh = []
        for _ in range(count):
            host = f"127.0.0.{len(self.replicas) + 2}"
            replica = Replica(host, self.port, self.folder / host, *self.extra)
            self.replicas.append(replica)
            fresh.append(replica)
        for replica in fresh:
            replica.wait_ready()
        return fresh

    @property
    def live(self) -> list[Replica]:
        return [r for r in self.replicas if r.process.poll() is None]

    def hosts(self) -> list[str]:
        return [r.host for r in self.live]

    def close(self) -> None:
        for replica in self.replicas:
            with contextlib.suppress(Exception):
                replica.terminate(timeout=10)


# the headless Service name the tests' DNS server (conftest.py ``dns``) answers with the live replicas
REPLICAS_NAME = "colours-pods.vision.svc.cluster.test"


@contextlib.contextmanager
def replica_set(folder: Path, *extra: str, port: int | None = None) -> Iterator[ReplicaSet]:
    replicas = ReplicaSet(folder, *extra, port=port)
    try:
        yield replicas
    finally:
        replicas.close()
