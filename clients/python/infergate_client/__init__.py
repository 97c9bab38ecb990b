"""Python client of infergate, an ONNX image classifier served over POST, WebSocket and SSE.

    from infergate_client import Client
    client = Client("http://127.0.0.1:8080", api_key="ig_...")
    client.classify("dog.jpg")["predictions"][0]["label"]
    for item in client.stream(["a.jpg", "b.jpg"], transport="auto"):
        print(item["source"], item.get("predictions") or item["error"])
"""

from .client import DEFAULT_URL, TRANSPORTS, AsyncClient, Client
from .errors import (
    AuthError,
    ConnectionLimitError,
    ImageTooLargeError,
    InfergateError,
    InvalidImageError,
    InvalidRequestError,
    OverloadedError,
    RateLimitError,
    TransportError,
)

__version__ = "0.1.0"

__all__ = [
    "Client",
    "AsyncClient",
    "DEFAULT_URL",
    "TRANSPORTS",
    "InfergateError",
    "AuthError",
    "RateLimitError",
    "ConnectionLimitError",
    "InvalidImageError",
    "ImageTooLargeError",
    "InvalidRequestError",
    "OverloadedError",
    "TransportError",
    "__version__",
]
