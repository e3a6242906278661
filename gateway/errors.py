"""OpenAI-style errors: every failure a client sees is `{"error": {...}}` with the right status.

Why one module without HTTP: `APIError` is raised anywhere (the service, the batch worker, the libraries of
the request path), and its body is the same data whether it goes out as an HTTP answer or a batch line;
gateway/error_handlers.py renders it (and anything unexpected) for the app.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    502: "upstream_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}


class APIError(Exception):
    """An error with an HTTP status, rendered as OpenAI's error body."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.headers = headers
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")

    def body(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


NAMED_LABELS = 20
"""Labels an error message names at most: a label set may have 1,000 labels of 200 characters."""


def named(labels: Sequence[str]) -> str:
    """A label set for an error message, capped: the first NAMED_LABELS and how many more."""
    shown = ", ".join(repr(label) for label in labels[:NAMED_LABELS])
    return shown if len(labels) <= NAMED_LABELS else f"{shown} and {len(labels) - NAMED_LABELS} more"


def bad_request(message: str, param: str | None = None, code: str | None = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def invalid(exc: ValidationError) -> APIError:
    """A 400 naming the first invalid field of a pydantic validation error."""
    err = exc.errors()[0]
    param = ".".join(str(p) for p in err["loc"]) or None
    what = "missing required parameter" if err["type"] == "missing" else err["msg"]
    return APIError(400, f"{param}: {what}" if param else what, param=param,
                    code="missing_required_parameter" if err["type"] == "missing" else "invalid_value")
