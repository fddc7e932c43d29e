"""Errors as OpenAI sends them: ``{"error": {"message", "type", "param", "code"}}``.

The official clients map the HTTP status to an exception class and read
``message`` and ``code`` from this body, so every refusal uses it.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["OpenAIError", "error_body", "error_event"]

# HTTP status -> OpenAI error type, as the OpenAI API reports them.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class OpenAIError(Exception):
    """A refusal with an HTTP status and a specific machine-readable ``code``."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}

    @property
    def type(self) -> str:
        return _TYPES.get(
            self.status, "api_error" if self.status >= 500 else "invalid_request_error"
        )

    def body(self) -> bytes:
        return error_body(self.message, self.type, self.code, self.param)


def error_body(message: str, type_: str, code: str, param: str | None = None) -> bytes:
    error: dict[str, Any] = {"message": message, "type": type_, "param": param, "code": code}
    return orjson.dumps({"error": error})


def error_event(message: str, code: str, type_: str = "api_error") -> bytes:
    """A final SSE event carrying an error; the openai client raises ``APIError`` on it."""
    return b"data: " + error_body(message, type_, code) + b"\n\n"
