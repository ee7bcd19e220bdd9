"""``--frontends N``: N processes doing transport and request-side work on the same ports, one model process.

``supervisor`` (the model process: spawns the frontends, hosts the one engine behind their links),
``frontend`` (one frontend process: the one-process runtime over a ``RemoteEngine``). The link, the rings and
both engines are the engine's (``kubeinfer.runtime.engine``).
"""
