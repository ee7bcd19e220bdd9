"""The operator package's sub-command: `kubeinfer operator` runs ``commands/operator.py``, which offers
``add_arguments(parser)`` and ``run(args) -> int``."""
