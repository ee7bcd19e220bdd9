"""The garbage collector after the warm-up: loaded objects frozen out of full collections, new cycles still freed."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

AFTER_FREEZE = textwrap.dedent("""
    import gc, json, weakref
    from kubeinfer.runtime.gc_freeze import freeze_loaded_objects
    loaded = [[i] for i in range(200_000)]  # stands in for what torch and the model leave behind
    gc.collect()
    walked_before = len(gc.get_objects(generation=2))
    frozen = freeze_loaded_objects()
    walked_after = len(gc.get_objects(generation=2))

    class Node:
        pass
    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle made while serving
    alive = weakref.ref(a)
    del a, b
    gc.collect()
    print(json.dumps({"before": walked_before, "after": walked_after, "frozen": frozen,
                      "cycle_freed": alive() is None}))
""")


def test_loaded_objects_leave_full_collections_and_new_cycles_are_still_freed() -> None:
    # a subprocess: freezing is process-wide and would change the test runner's own collections
    out = subprocess.run([sys.executable, "-c", AFTER_FREEZE], capture_output=True, text=True, check=True, timeout=60)
    result = json.loads(out.stdout)
    assert result["before"] > 200_000  # a full collection walked the loaded objects...
    assert result["frozen"] >= 200_000
    assert result["after"] < 1_000  # ...and no longer does
    assert result["cycle_freed"]
