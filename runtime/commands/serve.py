"""Run the inference runtime for one model: gRPC (kubeinfer.v1, health, reflection) and HTTP (REST, metrics).

Every flag can also be set through the environment as KUBEINFER_<FLAG>, for example
KUBEINFER_MAX_BATCH_SIZE=32; a flag given on the command line wins over the environment.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

from kubeinfer.runtime.allocator import keep_freed_memory
from kubeinfer.runtime.config import ConfigError, ServeConfig, add_arguments

__all__ = ["add_arguments", "run"]


def run(args: argparse.Namespace) -> int:
    """Entry point of `kubeinfer serve` (the server and its model libraries load only now)."""
    try:
        config = ServeConfig.from_args(args)
    except ConfigError as exc:
        print(f"kubeinfer serve: {exc}", file=sys.stderr)
        return 2
    keep_freed_memory()  # before the model libraries load and allocate
    if config.frontends > 1:
        # every process's metrics go to files merged at each scrape; set before prometheus_client is imported
        multiprocess_dir = tempfile.mkdtemp(prefix="kubeinfer-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = multiprocess_dir
        from kubeinfer.runtime.frontends.supervisor import ModelProcess
        from kubeinfer.runtime.server import serve

        code = serve(config, ModelProcess(config), "model-process")
        shutil.rmtree(multiprocess_dir, ignore_errors=True)
    else:
        from kubeinfer.runtime.server import Runtime, serve

        code = serve(config, Runtime(config))
    from kubeinfer.runtime.server import exit_at_once

    exit_at_once(code)
