"""OpenAI's error object (``{"error": {"message", "type", "param", "code"}}``) and its status codes."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error answered as OpenAI answers it."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",  # noqa: A002
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def not_found(kind: str, ident: str, param: str | None = None) -> ApiError:
    """404 for an object this caller cannot see: one that does not exist and one of another project alike."""
    return ApiError(404, f"No such {kind}: {ident}", param=param, code=f"{kind.replace(' ', '_')}_not_found")


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)
