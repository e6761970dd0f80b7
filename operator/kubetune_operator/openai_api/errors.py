"""Errors in the OpenAI API's shape: ``{"error": {"message", "type", "param", "code"}}``.

The status code decides which exception the official ``openai`` client raises
(400 BadRequestError, 401 AuthenticationError, 403 PermissionDeniedError,
404 NotFoundError, 409 ConflictError, 422 UnprocessableEntityError, 5xx
InternalServerError), so each error here carries the one a client expects.
"""
from __future__ import annotations

from typing import Any

# The OpenAI API's error "type" for each status code.
_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class ApiError(Exception):
    """An error answered to the client; ``param`` names the request field at fault."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None, type: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "server_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid(message: str, param: str | None = None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def unsupported(message: str, param: str | None = None) -> ApiError:
    """A part of the OpenAI API that kubetune does not implement: said, never ignored."""
    return ApiError(400, message, param=param, code="unsupported")


def not_found(what: str, ident: str, param: str | None = None) -> ApiError:
    return ApiError(404, f"No such {what}: {ident!r}", param=param, code=f"{what.replace(' ', '_').replace('-', '_')}_not_found")
