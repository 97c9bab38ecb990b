"""Exceptions raised by the infergate client.

Every error the server reports has a ``code`` (see SPEC.md, "Common rules"); the client
maps it to one class below, so callers can catch what they care about::

    try:
        client.classify("photo.jpg")
    except RateLimitError as e:
        time.sleep(e.retry_after)
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Optional


class InfergateError(Exception):
    """Base class of every error the client raises.

    Attributes: ``code`` (the server's error code, or a client-side one such as
    ``transport``), ``status`` (HTTP status or WebSocket close code, when there is
    one), ``message`` (human readable), ``request_id`` (the server's X-Request-ID,
    when known), ``body`` (the decoded error body, when there is one).
    """

    default_code = "error"

    def __init__(
        self,
        message: str,
        *,
        code: Optional[str] = None,
        status: Optional[int] = None,
        request_id: Optional[str] = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.status = status
        self.request_id = request_id
        self.body = body

    def __str__(self) -> str:
        s = self.code
        if self.status is not None:
            s += f" ({self.status})"
        s += f": {self.message}"
        if self.request_id:
            s += f" [request {self.request_id}]"
        return s


class AuthError(InfergateError):
    """The API key is missing, unknown or revoked (HTTP 401/403, close code 4401)."""

    default_code = "unauthorized"


class RateLimitError(InfergateError):
    """Over a rate limit (HTTP 429, or a frame answered ``rate_limited``).

    ``retry_after`` is the number of seconds (float) to wait before trying again, from
    the ``Retry-After`` header or the message's ``retry_after_ms``; None if unknown.
    """

    default_code = "rate_limited"

    def __init__(self, message: str, *, retry_after: Optional[float] = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class ConnectionLimitError(RateLimitError):
    """The key's user already holds ``max_connections`` streams and SSE sessions
    (HTTP 429 before the WebSocket upgrade or on ``POST /v1/sessions``, close code 4429)."""


class InvalidImageError(InfergateError):
    """The bytes are not a decodable JPEG, PNG, GIF or WebP image (``invalid_image``)."""

    default_code = "invalid_image"


class ImageTooLargeError(InfergateError):
    """The image is over the byte or pixel limit (HTTP 413, close code 1009)."""

    default_code = "image_too_large"


class InvalidRequestError(InfergateError):
    """The request is malformed (``invalid_request``, ``unsupported_media_type``,
    ``not_found``, ``method_not_allowed``)."""

    default_code = "invalid_request"


class OverloadedError(InfergateError):
    """The server cannot take the work now (``overloaded`` or ``unavailable``, HTTP 503).

    ``retry_after`` is the suggested wait in seconds, when the server gave one.
    """

    default_code = "overloaded"

    def __init__(self, message: str, *, retry_after: Optional[float] = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class TransportError(InfergateError):
    """The server could not be reached, or a connection broke, or it answered
    something that is not the infergate protocol."""

    default_code = "transport"


class ResumeError(TransportError):
    """A dropped WebSocket stream could not be resumed.

    ``reason`` says why: ``"expired"`` (the server's resume window passed),
    ``"gap"`` (its replay ring no longer holds the answers the client missed),
    ``"not_found"`` (unknown session, or another user's), ``"unreachable"`` (no new
    connection could be opened within ``max_resume_attempts``), or another word the
    server gave. The frames that were answered before the drop have been yielded;
    the others have no answer.
    """

    default_code = "resume_failed"

    def __init__(self, message: str, *, reason: Optional[str] = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.reason = reason


_BY_CODE = {
    "unauthorized": AuthError,
    "forbidden": AuthError,
    "rate_limited": RateLimitError,
    "invalid_image": InvalidImageError,
    "image_too_large": ImageTooLargeError,
    "invalid_request": InvalidRequestError,
    "unsupported_media_type": InvalidRequestError,
    "not_found": InvalidRequestError,
    "method_not_allowed": InvalidRequestError,
    "overloaded": OverloadedError,
    "unavailable": OverloadedError,
}

_BY_STATUS = {
    401: AuthError,
    403: AuthError,
    413: ImageTooLargeError,
    429: RateLimitError,
    400: InvalidRequestError,
    404: InvalidRequestError,
    415: InvalidRequestError,
    503: OverloadedError,
}


def _retry_after_seconds(headers: Optional[Mapping[str, str]], retry_after_ms: Any = None) -> Optional[float]:
    if isinstance(retry_after_ms, (int, float)) and not isinstance(retry_after_ms, bool):
        return max(float(retry_after_ms), 0.0) / 1000.0
    if headers is not None:
        value = headers.get("Retry-After")
        if value:
            try:
                return max(float(value), 0.0)
            except ValueError:
                return None
    return None


def error_from_code(
    code: str,
    message: str,
    *,
    status: Optional[int] = None,
    request_id: Optional[str] = None,
    retry_after: Optional[float] = None,
    body: Any = None,
) -> InfergateError:
    """Build the exception for a server error code."""
    cls = _BY_CODE.get(code)
    if cls is None:
        cls = _BY_STATUS.get(status or 0, InfergateError)
    if cls is RateLimitError and "stream" in message.lower() and "too many" in message.lower():
        cls = ConnectionLimitError
    kw: dict = dict(code=code, status=status, request_id=request_id, body=body)
    if issubclass(cls, (RateLimitError, OverloadedError)):
        kw["retry_after"] = retry_after
    return cls(message, **kw)


def error_from_response(status: int, headers: Mapping[str, str], body: bytes) -> InfergateError:
    """Build the exception for an HTTP error response (status >= 400)."""
    request_id = headers.get("X-Request-ID")
    code, message, decoded = None, None, None
    try:
        decoded = json.loads(body.decode("utf-8")) if body else None
    except (UnicodeDecodeError, ValueError):
        decoded = None
    if isinstance(decoded, dict):
        err = decoded.get("error")
        if isinstance(err, dict):
            code = err.get("code") if isinstance(err.get("code"), str) else None
            message = err.get("message") if isinstance(err.get("message"), str) else None
        request_id = decoded.get("request_id") or request_id
    if code is None:
        code = {401: "unauthorized", 403: "forbidden", 404: "not_found", 413: "image_too_large",
                429: "rate_limited", 503: "unavailable"}.get(status, "http_error")
        text = body[:200].decode("utf-8", "replace").strip() if body else ""
        message = message or (f"HTTP {status}" + (f": {text}" if text else ""))
    return error_from_code(
        code, message or f"HTTP {status}", status=status, request_id=request_id,
        retry_after=_retry_after_seconds(headers), body=decoded,
    )


# WebSocket close codes of the stream protocol (SPEC.md, "Close codes").
def error_from_close(code: Optional[int], reason: str = "") -> InfergateError:
    """Build the exception for a WebSocket (or SSE ``close`` event) that ended a stream."""
    reason = reason or ""
    if code == 4401:
        return AuthError(reason or "authentication failed", code="unauthorized", status=code)
    if code == 4429:
        return ConnectionLimitError(reason or "too many open streams for this key",
                                    code="rate_limited", status=code, retry_after=1.0)
    if code == 1009:
        return ImageTooLargeError(reason or "message over max_message_bytes", status=code)
    if code == 1008:
        return InvalidRequestError(reason or "protocol violation", status=code)
    if code == 1013:
        return OverloadedError(reason or "the model is not available", code="unavailable", status=code)
    if code == 1011:
        return InfergateError(reason or "internal server error", code="internal", status=code)
    if code == 1001:
        return TransportError(reason or "the server is going away", code="going_away", status=code)
    if code is None:
        return TransportError(reason or "the connection was lost")
    return TransportError(f"stream closed with code {code}" + (f": {reason}" if reason else ""), status=code)
