"""kubeinfer: a Kubernetes-operator-managed inference platform for vision models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kubeinfer")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"
