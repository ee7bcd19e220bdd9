"""A rollout's traffic table as the kubelet keeps a mounted ConfigMap, for runtimes started by the tests."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

STABLE = "a1b2c3d4e5"


class TrafficDir:
    """A mounted ConfigMap as the kubelet keeps it: traffic.json -> ..data/traffic.json, ..data -> ..TIMESTAMP,
    each update a new ..TIMESTAMP folder and an atomic swap of ..data."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / "traffic.json"
        self.updates = 0
        (root / "traffic.json").symlink_to("..data/traffic.json")

    def write(self, text: str) -> None:
        self.updates += 1
        folder = self.root / f"..{self.updates:04d}"
        folder.mkdir()
        (folder / "traffic.json").write_text(text)
        link = self.root / "..data_tmp"
        link.symlink_to(folder.name)
        os.replace(link, self.root / "..data")

    def table(self, generation: int, candidate: tuple[str, str] | None = None, shadow: int = 0,
              weight: int = 0) -> None:
        body: dict[str, Any] = {"generation": generation,
                                "stable": {"revision": STABLE, "target": "stable.ns.svc.cluster.local:8001"},
                                "candidate": None, "candidateWeight": weight, "shadowPercent": shadow}
        if candidate is not None:
            body["candidate"] = {"revision": candidate[0], "target": candidate[1]}
        self.write(json.dumps(body))
