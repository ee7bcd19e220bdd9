"""The clients package's sub-commands: `kubeinfer NAME` runs ``commands/NAME.py``, which offers
``add_arguments(parser)`` and ``run(args) -> int`` and imports nothing heavy until ``run``."""
