"""Transport-neutral errors: the data plane raises them, each transport maps them to its own status codes."""

from __future__ import annotations

import enum


class Code(enum.Enum):
    """The failure kinds a caller can act on; names match gRPC status codes."""

    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    INTERNAL = 13
    UNAVAILABLE = 14


HTTP_STATUS = {
    Code.INVALID_ARGUMENT: 400,
    Code.NOT_FOUND: 404,
    Code.FAILED_PRECONDITION: 412,
    Code.RESOURCE_EXHAUSTED: 413,
    Code.DEADLINE_EXCEEDED: 504,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
}


class InferenceError(Exception):
    """A request failed for a reason the client should see, with a code and a one-line message."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"InferenceError({self.code.name}, {self.message!r})"


def invalid_argument(message: str) -> InferenceError:
    return InferenceError(Code.INVALID_ARGUMENT, message)


class StartupError(RuntimeError):
    """The runtime cannot start (missing or corrupt model, bad gallery...); printed as one line, exit non-zero."""
