"""Run the inference runtime for one model: gRPC (kubeinfer.v1, health, reflection) and HTTP (REST, metrics).

Every flag can also be set through the environment as KUBEINFER_<FLAG>, for example
KUBEINFER_MAX_BATCH_SIZE=32; a flag given on the command line wins over the environment.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Sequence

from kubeinfer.runtime import config as settings
from kubeinfer.runtime.allocator import keep_freed_memory
from kubeinfer.runtime.config import ConfigError, ServeConfig
from kubeinfer.runtime.tasks import registry


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every serve flag: the common ones, and those every registered task (and its kind of model) declares."""
    settings.add_arguments(parser, registry.task_names(), registry.flags())


def configure(args: argparse.Namespace) -> ServeConfig:
    """The validated settings of parsed serve flags, the served task's own checks included (ConfigError)."""
    config = ServeConfig.from_args(args, registry.flags())
    registry.check(config)
    return config


def parse(argv: Sequence[str]) -> ServeConfig:
    """``configure`` of a serve command line (tests, tools)."""
    parser = argparse.ArgumentParser(prog="kubeinfer serve")
    add_arguments(parser)
    return configure(parser.parse_args(list(argv)))


def run(args: argparse.Namespace) -> int:
    """Entry point of `kubeinfer serve` (the server and its model libraries load only now)."""
    try:
        config = configure(args)
    except ConfigError as exc:
        print(f"kubeinfer serve: {exc}", file=sys.stderr)
        return 2
    keep_freed_memory()  # before the model libraries load and allocate
    if config.frontends > 1:
        from kubeinfer.runtime.metrics import use_multiprocess_dir

        # every process's metrics go to files merged at each scrape
        multiprocess_dir = tempfile.mkdtemp(prefix="kubeinfer-metrics-")
        use_multiprocess_dir(multiprocess_dir)
        from kubeinfer.runtime.frontends.supervisor import ModelProcess
        from kubeinfer.runtime.server import serve

        code = serve(config, ModelProcess(config), "model-process")
        shutil.rmtree(multiprocess_dir, ignore_errors=True)
    else:
        from kubeinfer.runtime.server import Runtime, serve

        code = serve(config, Runtime(config))
    from kubeinfer.runtime.server import exit_at_once

    exit_at_once(code)
