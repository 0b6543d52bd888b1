"""What a client sees when a request fails: an OpenAI-style error object and an HTTP status.

`{"error": {"message", "type", "param", "code"}}`, the shape every OpenAI client parses. The
message is one line, never a traceback. `ApiError` is raised by the request parsing;
`from_exception` turns the library's typed errors into the status and code a client can act
on. Errors are recognised by class name along the exception's MRO, so this module needs neither
torch nor the store's internals.
"""

from __future__ import annotations

import logging
import os
from typing import Any

logger = logging.getLogger("homer.server")


class ApiError(Exception):
    """A request that cannot be served, as the client will see it.

    Attributes:
        status: the HTTP status code.
        message: one line saying what is wrong and, where there is one, the fix.
        type: OpenAI's error type (`invalid_request_error`, `authentication_error`,
            `not_found_error`, `server_error`).
        param: the request field at fault, if one is.
        code: a stable machine-readable code (`model_not_found`, `context_length_exceeded`, ...).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else "") or type(exc).__name__


def _names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


#: Library error class name -> (HTTP status, code, type); the first match along the MRO wins.
_KNOWN: list[tuple[str, int, str, str]] = [
    ("StoreEmptyError", 404, "store_empty", "invalid_request_error"),
    ("CacheNotFoundError", 404, "model_not_found", "invalid_request_error"),
    ("CacheExistsError", 409, "cache_exists", "invalid_request_error"),
    ("CacheMismatchError", 409, "cache_mismatch", "invalid_request_error"),
    ("ContextOverflowError", 400, "context_length_exceeded", "invalid_request_error"),
    ("DocumentError", 400, "invalid_document", "invalid_request_error"),
    ("UnsupportedModelError", 400, "unsupported_model", "invalid_request_error"),
    ("ModelLoadError", 500, "model_load_error", "server_error"),
    ("CacheError", 500, "cache_error", "server_error"),
    ("HomerError", 400, "invalid_request", "invalid_request_error"),
]


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc).lower()  # torch's CPU allocator says "can't allocate memory"
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "allocate memory" in text)


def from_exception(exc: BaseException) -> ApiError:
    """The `ApiError` a client gets for `exc` (an unknown exception is logged as a bug)."""
    if isinstance(exc, ApiError):
        return exc
    names = _names(exc)
    for name, status, code, kind in _KNOWN:
        if name in names:
            param = "messages" if code == "context_length_exceeded" else None
            if code in ("model_not_found", "store_empty"):
                param = "model"
            return ApiError(status, _one_line(exc), type=kind, param=param, code=code)
    if _is_out_of_memory(exc):
        return ApiError(
            503,
            "out of memory; try again later or a shorter request",
            type="server_error",
            code="out_of_memory",
        )
    if isinstance(exc, ValueError):
        return ApiError(400, _one_line(exc), code="invalid_value")
    if os.environ.get("HOMER_DEBUG", "").strip() not in ("", "0", "false", "no"):
        logger.exception("unexpected error")
    else:
        logger.error("unexpected error: %s: %s", type(exc).__name__, _one_line(exc))
    return ApiError(
        500,
        f"internal error: {type(exc).__name__}: {_one_line(exc)}",
        type="server_error",
        code="internal_error",
    )
