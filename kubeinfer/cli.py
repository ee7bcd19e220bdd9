"""The `kubeinfer` console script: one entry point, a sub-command per job.

Each sub-command lives in its own module, ``commands/NAME.py`` of the package it belongs to, exposing
``add_arguments(parser)`` and ``run(args) -> int``. Only the module of the sub-command being run is imported
(and those import nothing heavy at module level), so ``kubeinfer serve`` loads no client or operator code,
``kubeinfer operator`` never loads torch, and ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

# sub-command -> (module, one-line help): `kubeinfer NAME` runs the module commands/NAME.py of the package it
# belongs to (runtime, clients or operator)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("kubeinfer.runtime.commands.serve", "run the inference runtime (gRPC + HTTP) for one model"),
    "predict": ("kubeinfer.clients.commands.predict", "send images to a runtime and print the results as JSON"),
    "video": ("kubeinfer.clients.commands.video",
              "process a video file through a runtime's video task, write the result"),
    "operator": ("kubeinfer.operator.commands.operator",
                 "run the operator turning InferenceService resources into runtimes"),
    "fetch": ("kubeinfer.runtime.commands.fetch",
              "download model files (http(s)://, s3://, gs://) into a folder (the init container)"),
    "export": ("kubeinfer.runtime.commands.export",
               "export a YOLO .pt detector to ONNX for the cpu image (the init container)"),
    "demo": ("kubeinfer.runtime.commands.demo", "train the small demo detector (synthetic rectangles, offline)"),
    "gallery": ("kubeinfer.runtime.commands.gallery",
                "build recognition galleries (embeddings files) from image folders"),
}


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The command line; only the ``selected`` sub-command's module is imported and its flags added (None: all
    of them, as the tests read every sub-command's help)."""
    from kubeinfer import __version__

    parser = argparse.ArgumentParser(prog="kubeinfer", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"kubeinfer {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        if selected is not None and name != selected:
            commands.add_parser(name, help=help_text)
            continue
        module = importlib.import_module(module_name)
        sub = commands.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip(),
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
        sub.set_defaults(_module=module)
    return parser


def _sub_command(argv: Sequence[str]) -> str:
    """The sub-command ``argv`` runs ("" when it names none: ``kubeinfer --help``, ``--version``, a typo)."""
    word = next((word for word in argv if not word.startswith("-")), "")
    return word if word in COMMANDS else ""


SIGPIPE_EXIT = 141  # what a shell reports for a command killed by SIGPIPE


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser(_sub_command(words)).parse_args(words)
        return int(args._module.run(args) or 0)
    except BrokenPipeError:
        # the reader went away (`kubeinfer predict ... | head`): stop quietly, as Unix tools do; stdout goes
        # to /dev/null so the interpreter's final flush does not raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return SIGPIPE_EXIT


if __name__ == "__main__":
    sys.exit(main())
