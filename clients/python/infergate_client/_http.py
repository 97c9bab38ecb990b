"""Plain-HTTP plumbing on the standard library's http.client.

http.client is used rather than urllib so that no proxy from the environment is
applied to a server the caller named, and so that the SSE event stream can be read
line by line as it arrives.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import threading
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union
from urllib.parse import quote, urlsplit

from .errors import TransportError, error_from_response

USER_AGENT = "infergate-python/0.1"

ImageInput = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview]


def sniff_content_type(data: bytes) -> str:
    """The Content-Type of an encoded image, from its magic bytes.

    Unknown bytes are sent as application/octet-stream: the server decides from the
    bytes anyway and answers invalid_image for what it cannot decode.
    """
    head = bytes(data[:16])
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"GIF87a") or head.startswith(b"GIF89a"):
        return "image/gif"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def load_image(image: Any) -> Tuple[bytes, str]:
    """Return (bytes, source) for a path, bytes-like object or binary file object."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image), "<bytes>"
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        with open(path, "rb") as f:
            return f.read(), str(path)
    read = getattr(image, "read", None)
    if callable(read):
        data = read()
        if isinstance(data, str):
            raise TypeError("open image files in binary mode ('rb')")
        return bytes(data), str(getattr(image, "name", "<file>"))
    raise TypeError(f"an image is a path, bytes or a binary file, not {type(image).__name__}")


def source_of(image: Any) -> str:
    if isinstance(image, (str, os.PathLike)):
        return str(os.fspath(image))
    if isinstance(image, (bytes, bytearray, memoryview)):
        return "<bytes>"
    return str(getattr(image, "name", "<file>"))


class Response:
    """A complete HTTP response."""

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        try:
            return json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise TransportError(
                f"the server answered HTTP {self.status} with a body that is not JSON",
                status=self.status, request_id=self.headers.get("X-Request-ID"),
            ) from e

    def raise_for_error(self) -> None:
        if self.status >= 400:
            raise error_from_response(self.status, self.headers, self.body)


class HTTP:
    """Keep-alive HTTP connections to one server, safe for use from several threads."""

    def __init__(self, url: str, timeout: float) -> None:
        parts = urlsplit(url if "://" in url else "http://" + url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"the server URL must be http:// or https://, not {url!r}")
        if not parts.hostname:
            raise ValueError(f"the server URL has no host: {url!r}")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if self.scheme == "https" else 80)
        self.base_path = parts.path.rstrip("/")
        self.timeout = timeout
        self._lock = threading.Lock()
        self._idle: List[http.client.HTTPConnection] = []

    # -- URLs -------------------------------------------------------------------

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    def path(self, route: str) -> str:
        """The request path for a route of the API ("/v1/classify")."""
        if not route.startswith("/"):
            route = "/" + route
        return self.base_path + route

    def ws_url(self, route: str) -> str:
        scheme = "wss" if self.scheme == "https" else "ws"
        return f"{scheme}://{self.netloc}{self.path(route)}"

    def url(self, route: str) -> str:
        return f"{self.scheme}://{self.netloc}{self.path(route)}"

    # -- connections ------------------------------------------------------------

    def new_connection(self, timeout: Optional[float] = None) -> http.client.HTTPConnection:
        t = self.timeout if timeout is None else timeout
        if self.scheme == "https":
            return http.client.HTTPSConnection(self.host, self.port, timeout=t,
                                               context=ssl.create_default_context())
        return http.client.HTTPConnection(self.host, self.port, timeout=t)

    def _get(self) -> Tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return self.new_connection(), False

    def _put(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < 8:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for c in idle:
            c.close()

    def __del__(self) -> None:
        # Idle keep-alive connections belong to the pool: close them with it.
        try:
            self.close()
        except Exception:
            pass

    def request(
        self,
        method: str,
        route: str,
        body: Optional[bytes] = None,
        headers: Optional[Dict[str, str]] = None,
        query: Optional[Mapping[str, Any]] = None,
    ) -> Response:
        """Send one request and read the whole response.

        Connection failures raise TransportError. HTTP error statuses are returned,
        not raised: call Response.raise_for_error.
        """
        path = self.path(route)
        if query:
            path += "?" + "&".join(f"{quote(str(k))}={quote(str(v), safe='')}" for k, v in query.items())
        hdrs = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        hdrs.update(headers or {})
        if body is not None:
            hdrs["Content-Length"] = str(len(body))
        for attempt in range(2):
            conn, reused = self._get()
            try:
                conn.request(method, path, body=body, headers=hdrs)
                resp = conn.getresponse()
                data = resp.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                conn.close()
                # A keep-alive connection the server had already closed: the request
                # never reached it, so sending it again on a new connection is safe.
                if reused and attempt == 0:
                    continue
                raise TransportError(f"connection to {self.netloc} lost: {e}") from e
            except socket.timeout as e:
                conn.close()
                raise TransportError(f"no answer from {self.netloc} within {self.timeout} s") from e
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                raise TransportError(f"cannot reach {self.url('')}: {_describe(e)}") from e
            if resp.will_close:
                conn.close()
            else:
                self._put(conn)
            return Response(resp.status, resp.headers, data)
        raise AssertionError("unreachable")


def _describe(e: BaseException) -> str:
    if isinstance(e, ConnectionRefusedError):
        return "connection refused (is the server running?)"
    if isinstance(e, socket.gaierror):
        return f"unknown host ({e})"
    return str(e) or type(e).__name__


def auth_headers(api_key: Optional[str]) -> Dict[str, str]:
    from .errors import AuthError

    if not api_key:
        raise AuthError(
            "no API key: pass api_key=... or set INFERGATE_API_KEY", code="unauthorized"
        )
    return {"Authorization": f"Bearer {api_key}"}


def json_or_error(resp: Response) -> Any:
    resp.raise_for_error()
    return resp.json()


__all__ = [
    "HTTP", "Response", "sniff_content_type", "load_image", "source_of",
    "auth_headers", "json_or_error", "USER_AGENT",
]
