"""``--frontends N``: N processes doing transport and decode on the same ports, one model process per device.

``supervisor`` (the model process: spawns the frontends, loads the model, answers their batches),
``frontend`` (one frontend process: today's transports and task code, its batcher remote),
``remote`` (what a frontend's task sees of the model: its facts and a batcher over the link),
``link`` (the messages between them), ``ring`` (the shared-memory image slots).
"""
