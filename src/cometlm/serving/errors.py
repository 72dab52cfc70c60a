"""The errors the server answers with, in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}`` with
the HTTP status that says what kind of failure it was. Every refusal is raised as an ``APIError`` before anything
is written, so a bad request changes nothing on disk."""

from __future__ import annotations


class APIError(Exception):
    """A request the server refuses; ``status`` is the HTTP status, the rest is OpenAI's error object."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def session_not_found(session_id: str) -> APIError:
    """Also the answer for another key's session: a session one may not see does not exist for one."""
    return APIError(404, f"no session {session_id!r}", param="session_id", code="session_not_found")


def unauthorized(message: str) -> APIError:
    return APIError(401, message, type="authentication_error", code="invalid_api_key")


def too_large(what: str, limit: int) -> APIError:
    return APIError(413, f"{what} is larger than this server's limit of {limit:,} bytes", code="request_too_large")


def conflict(message: str, code: str, param: str | None = None) -> APIError:
    return APIError(409, message, param=param, code=code)


def quota(message: str, code: str) -> APIError:
    return APIError(429, message, type="insufficient_quota", code=code)


def server_error(message: str = "the server failed to answer this request; see its log") -> APIError:
    return APIError(500, message, type="server_error", code="internal_error")


_STATUS_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large", 415: "unsupported_media_type"}


def from_http_status(status: int, detail: str) -> APIError:
    """The framework's own refusals (an unknown path, a wrong method) in the same shape."""
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return APIError(status, detail, type=kind, code=_STATUS_CODES.get(status, f"http_{status}"))
