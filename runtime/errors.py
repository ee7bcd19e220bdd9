"""Transport-neutral errors: the data plane raises them, the transports' one interceptor and one middleware map them.

A handler raises an ``InferenceError`` (or lets an unexpected exception escape); ``public_error`` turns
anything raised into what the client may see. Each kind has one gRPC status and one HTTP status,
identical on every transport:

=====================  ====================  =====  ==============================================
kind                   gRPC                  HTTP   when
=====================  ====================  =====  ==============================================
``invalid_argument``   INVALID_ARGUMENT      400    bad image, parameter, tensor or body
``NotFound``           NOT_FOUND             404    unknown model or version (Open Inference Protocol)
``WrongTask``          FAILED_PRECONDITION   412    an RPC of another task than the one served
``PayloadTooLarge``    RESOURCE_EXHAUSTED    413    a message over --max-message-bytes
``Overloaded``         RESOURCE_EXHAUSTED    429    queue full, too many streams: retry later
``Unavailable``        UNAVAILABLE           503    loading or shutting down
``Cancelled``          CANCELLED             499    the client went away
anything else          INTERNAL              500    "internal error" + a request id in the server log
=====================  ====================  =====  ==============================================

``Overloaded`` carries a retry hint: HTTP ``Retry-After`` (seconds), gRPC trailing metadata
``grpc-retry-pushback-ms`` (the header gRPC's own retry policy reads).
"""

from __future__ import annotations

import contextvars
import enum
import logging
import random

log = logging.getLogger("kubeinfer.runtime.errors")


class Code(enum.Enum):
    """The failure kinds a caller can act on; names and values match gRPC status codes."""

    CANCELLED = 1
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    INTERNAL = 13
    UNAVAILABLE = 14


# The HTTP status of each code, for errors without a kind of their own.
HTTP_STATUS = {
    Code.CANCELLED: 499,
    Code.INVALID_ARGUMENT: 400,
    Code.NOT_FOUND: 404,
    Code.FAILED_PRECONDITION: 412,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.DEADLINE_EXCEEDED: 504,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
}
DEFAULT_RETRY_AFTER_S = 1.0


class InferenceError(Exception):
    """A request failed for a reason the client should see, with a code and a one-line message."""

    def __init__(self, code: Code, message: str, *, http_status: int | None = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = HTTP_STATUS[code] if http_status is None else http_status
        self.retry_after_s = retry_after_s

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code.name}, {self.message!r})"


class NotFound(InferenceError):
    def __init__(self, message: str) -> None:
        super().__init__(Code.NOT_FOUND, message)


class WrongTask(InferenceError):
    def __init__(self, message: str) -> None:
        super().__init__(Code.FAILED_PRECONDITION, message)


class PayloadTooLarge(InferenceError):
    """The request is bigger than the runtime accepts: sending it again will not help."""

    def __init__(self, message: str) -> None:
        super().__init__(Code.RESOURCE_EXHAUSTED, message, http_status=413)


class Overloaded(InferenceError):
    """The runtime has no room for the request now (queue, streams): the same request may succeed later."""

    def __init__(self, message: str, retry_after_s: float = DEFAULT_RETRY_AFTER_S) -> None:
        super().__init__(Code.RESOURCE_EXHAUSTED, message, http_status=429, retry_after_s=retry_after_s)


class Unavailable(InferenceError):
    def __init__(self, message: str) -> None:
        super().__init__(Code.UNAVAILABLE, message)


class Cancelled(InferenceError):
    def __init__(self, message: str = "the client cancelled the request") -> None:
        super().__init__(Code.CANCELLED, message)


def invalid_argument(message: str) -> InferenceError:
    return InferenceError(Code.INVALID_ARGUMENT, message)


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the request exceeds {limit} bytes (--max-message-bytes)")


# The id of the request being served, set by the transports for everything that runs on its behalf.
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("kubeinfer_request_id", default="-")


def new_request_id(given: str | None = None) -> str:
    """The client's id when it sent a sane one (x-request-id), else a fresh one."""
    if given and len(given) <= 128 and given.isprintable():
        return given
    return f"{random.getrandbits(64):016x}"  # uuid4 reads os.urandom: a system call that drops the GIL


def public_error(exc: BaseException, what: str = "request") -> InferenceError:
    """What the client may see of ``exc``: an InferenceError as is; anything else logged here with the request id
    and answered as INTERNAL "internal error" with that id (never the exception's text)."""
    if isinstance(exc, InferenceError):
        return exc
    request_id = REQUEST_ID.get()
    log.error("%s failed (request id %s)", what, request_id, exc_info=exc)
    return InferenceError(Code.INTERNAL, f"internal error (request id {request_id})")


class StartupError(RuntimeError):
    """The runtime cannot start (missing or corrupt model, bad gallery...); printed as one line, exit non-zero."""
