"""The kubeinfer operator: a kopf operator turning InferenceService resources into runtime Deployments.

This folder is the package ``kubeinfer.operator``. When a checkout's root is on ``sys.path``
of an interpreter that has not imported the standard ``operator`` yet (``python -S`` from the
root), ``import operator`` would find this folder instead: in that case it installs the
standard library's module in its place, so nothing is ever shadowed.
"""

if __name__ == "operator":
    # Only modules loaded before `site` may be used here: importlib.util would import collections,
    # which imports operator again.
    import os
    import sys

    _path = os.path.join(os.path.dirname(os.__file__), "operator.py")
    _stdlib_operator = type(sys)("operator")
    _stdlib_operator.__file__ = _path
    with open(_path, encoding="utf-8") as _source:
        exec(compile(_source.read(), _path, "exec"), _stdlib_operator.__dict__)
    sys.modules["operator"] = _stdlib_operator
