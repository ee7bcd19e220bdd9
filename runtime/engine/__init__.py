"""The model side of the runtime: a loaded model, its dynamic batcher, its instances and its warm-up.

Tasks (the request side) reach a model only through an ``Engine`` (``base``): ``LocalEngine`` (``local``) runs it
in this process; ``RemoteEngine`` (``remote``) reaches the one the model process runs behind ``--frontends N``,
over a link (``link``: the messages, ``ring``: the shared-memory image slots, ``link_server``: the model
process's side). Each kind of model is one module: ``detector`` (YOLO), ``classifier``, ``encoder`` (with its
gallery); ``loading`` loads the one a runtime serves.
"""
