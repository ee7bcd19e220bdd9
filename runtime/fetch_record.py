"""What `kubeinfer fetch` wrote into a folder, and from which object: .kubeinfer-fetched.json in --into.

Each destination maps to its URL, size, sha256, and the object's ETag and version where the source has them. A
later fetch into the same folder (a restarted init container, a node-local cache) compares the ETag with the
store's and keeps a file that has not changed instead of downloading it again; a reader can tell which version of
a model a pod runs.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

RECORD = ".kubeinfer-fetched.json"


def load(into: Path) -> dict[str, dict[str, Any]]:
    """The record of ``into`` (empty when there is none or it cannot be read)."""
    try:
        data = json.loads((into / RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def entry(into: Path, dest: str) -> dict[str, Any]:
    found = load(into).get(dest)
    return found if isinstance(found, dict) else {}


def save(into: Path, dest: str, values: dict[str, Any]) -> None:
    """Record one destination, replacing the file atomically (a reader never sees half a record)."""
    data = load(into)
    data[dest] = values
    handle, temp = tempfile.mkstemp(dir=into, prefix=f".{RECORD}.", suffix=".part")
    with os.fdopen(handle, "w") as out:
        json.dump(data, out, indent=1, sort_keys=True)
        out.write("\n")
    os.replace(temp, into / RECORD)
