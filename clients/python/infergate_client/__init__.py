"""Python client of infergate, an ONNX image classifier served over POST, WebSocket and SSE.

    from infergate_client import Client
    client = Client("http://127.0.0.1:8080", api_key="ig_...")
    client.classify("dog.jpg")["predictions"][0]["label"]
    for item in client.stream(["a.jpg", "b.jpg"], transport="auto"):
        print(item["source"], item.get("predictions") or item["error"])

    with client.stream(camera_frames(), mode="latest") as stream:  # version 1.1 servers
        for item in stream:                                          # skipped items for stale frames
            ...
        stream.update(top_k=3)                                       # session.update
"""

from .client import DEFAULT_URL, MODES, TRANSPORTS, AsyncClient, AsyncStream, Client, Skipped, Stream
from .errors import (
    AuthError,
    ConnectionLimitError,
    ImageTooLargeError,
    InfergateError,
    InvalidImageError,
    InvalidRequestError,
    OverloadedError,
    RateLimitError,
    ResumeError,
    TransportError,
)

__version__ = "0.2.0"

__all__ = [
    "Client",
    "AsyncClient",
    "Stream",
    "AsyncStream",
    "Skipped",
    "DEFAULT_URL",
    "TRANSPORTS",
    "MODES",
    "InfergateError",
    "AuthError",
    "RateLimitError",
    "ConnectionLimitError",
    "InvalidImageError",
    "ImageTooLargeError",
    "InvalidRequestError",
    "OverloadedError",
    "TransportError",
    "ResumeError",
    "__version__",
]
