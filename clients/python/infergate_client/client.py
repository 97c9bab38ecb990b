"""The infergate client: single images over POST, many over a stream.

``Client`` is synchronous; its ``stream`` runs ``AsyncClient.stream`` on an event loop
of its own, in a background thread, so it can be used from any code, including code
that already runs an event loop.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime as _dt
import heapq
import http.client
import inspect
import json
import os
import socket
import threading
import time
from collections import deque
from typing import Any, AsyncIterator, Deque, Dict, Iterable, Iterator, List, Optional, Tuple, Union
from urllib.parse import quote

from ._http import HTTP, USER_AGENT, Response, auth_headers, json_or_error, load_image, sniff_content_type, source_of
from .errors import (
    AuthError,
    ConnectionLimitError,
    InfergateError,
    InvalidRequestError,
    OverloadedError,
    ResumeError,
    TransportError,
    error_from_close,
    error_from_code,
    error_from_response,
)

DEFAULT_URL = "http://127.0.0.1:8080"
TRANSPORTS = ("auto", "ws", "sse", "post")
#: The stream modes of a version 1.1 server: every frame answered, or only the newest.
MODES = ("ordered", "latest")
# The settings of a stream (SPEC.md, "Stream settings").
_SETTINGS = ("mode", "top_k", "fps")
# In latest mode the server holds at most two frames and answers the others at once
# with "skipped", so the client may keep more frames outstanding than max_in_flight:
# the frame waiting for the model is then always the newest one the caller gave.
_LATEST_IN_FLIGHT = 32
# Resume: the first wait between reconnection attempts, doubled after each failure
# up to the cap (and never past the server's resume window).
_RESUME_FIRST_DELAY = 0.1
_RESUME_MAX_DELAY = 2.0
# SSE: how many times one frame is POSTed when the POST fails without being taken
# (503 without a seq, or a broken connection), with the same backoff.
_SSE_FRAME_ATTEMPTS = 6

# Used when a transport does not say (POST has no ready message).
_DEFAULT_LIMITS = {"frames": None, "window_ms": 1000, "max_in_flight": 4, "max_message_bytes": 11534336}
# Added to every server-given wait, so a retried frame lands after the slot frees.
_RETRY_MARGIN = 0.03
# How often one frame is sent again when retry_rate_limited is on.
_MAX_ATTEMPTS = 20
# With fps pacing, frames are spaced this much wider than 1/fps: under a sliding
# window of fps frames per second, that leaves 60 ms for the jitter between when the
# client sends a frame and when the server reads it.
_PACE_SLACK = 1.06


def _utc_rfc3339(since: Union[str, _dt.datetime, None]) -> Optional[str]:
    if since is None or isinstance(since, str):
        return since
    if isinstance(since, _dt.datetime):
        if since.tzinfo is None:
            since = since.replace(tzinfo=_dt.timezone.utc)
        return since.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    raise TypeError("since is an RFC 3339 string or a datetime")


class Client:
    """A synchronous client of one infergate server.

    ``url`` is the server's base URL; ``api_key`` defaults to the INFERGATE_API_KEY
    environment variable; ``timeout`` (seconds) bounds connecting and each HTTP
    request. A Client may be shared between threads.
    """

    def __init__(self, url: str = DEFAULT_URL, api_key: Optional[str] = None, timeout: float = 30) -> None:
        self.url = url
        self.api_key = api_key if api_key is not None else os.environ.get("INFERGATE_API_KEY") or None
        self.timeout = timeout
        self._http = HTTP(url, timeout)
        #: The RateLimit-* headers of the last authenticated HTTP response:
        #: {"limit": int, "remaining": int, "reset": int} (seconds), or None.
        self.rate_limit: Optional[Dict[str, int]] = None

    def __repr__(self) -> str:
        return f"Client(url={self.url!r})"

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close idle keep-alive connections."""
        self._http.close()

    def _note_limits(self, resp: Response) -> None:
        try:
            self.rate_limit = {
                "limit": int(resp.headers["RateLimit-Limit"]),
                "remaining": int(resp.headers["RateLimit-Remaining"]),
                "reset": int(resp.headers["RateLimit-Reset"]),
            }
        except (KeyError, TypeError, ValueError):
            pass

    def _authed(self, method: str, route: str, **kw: Any) -> Response:
        headers = dict(kw.pop("headers", None) or {})
        headers.update(auth_headers(self.api_key))
        resp = self._http.request(method, route, headers=headers, **kw)
        self._note_limits(resp)
        return resp

    # -- single requests -------------------------------------------------------

    def classify(self, image: Any, top_k: int = 5) -> Dict[str, Any]:
        """Classify one image (a path, bytes, or a binary file object).

        Sends the raw bytes to ``POST /v1/classify`` with the Content-Type their magic
        bytes say, and returns the server's JSON: ``{"model": ..., "predictions":
        [{"label", "index", "confidence"}, ...]}``. Errors raise InfergateError
        subclasses (InvalidImageError, RateLimitError, AuthError, ...).
        """
        data, _ = load_image(image)
        resp = self._authed(
            "POST", "/v1/classify", body=data,
            headers={"Content-Type": sniff_content_type(data)}, query={"top_k": top_k},
        )
        return json_or_error(resp)

    def usage(self, since: Union[str, _dt.datetime, None] = None) -> Dict[str, Any]:
        """The caller's usage report (``GET /v1/usage``), optionally since a time
        (RFC 3339 string, or a datetime; naive datetimes are taken as UTC)."""
        s = _utc_rfc3339(since)
        resp = self._authed("GET", "/v1/usage", query={"since": s} if s else None)
        return json_or_error(resp)

    def model_info(self) -> Dict[str, Any]:
        """The served model's description (``GET /v1/model/info``; no key needed)."""
        return json_or_error(self._http.request("GET", "/v1/model/info"))

    def mint_token(self, ttl_seconds: int = 60, session: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """Mint a client token (``POST /v1/client_tokens``) with this client's API key.

        Returns ``{"token": "ct_...", "expires_at": "<RFC 3339>"}``. The token opens
        one stream, once, within ``ttl_seconds`` (1-600): pass it to a browser, or to
        ``stream(..., token=...)``. ``session`` holds the stream's starting settings
        (``mode``, ``top_k``, ``fps``); settings given to ``stream`` apply on top. A
        mint counts against the key's requests_per_minute.
        """
        body: Dict[str, Any] = {"ttl_seconds": ttl_seconds}
        if session is not None:
            body["session"] = session
        resp = self._authed("POST", "/v1/client_tokens", body=json.dumps(body).encode(),
                            headers={"Content-Type": "application/json"})
        return json_or_error(resp)

    # -- streams ---------------------------------------------------------------

    def stream(
        self,
        images: Iterable[Any],
        transport: str = "auto",
        fps: Union[float, str, None] = None,
        top_k: Optional[int] = None,
        retry_rate_limited: bool = False,
        token: Optional[str] = None,
        mode: Optional[str] = None,
        session: Optional[Dict[str, Any]] = None,
        resume: bool = True,
        max_resume_attempts: int = 5,
    ) -> "Stream":
        """Classify many images over one stream; iterate it for one dict per image, in input order.

        See AsyncClient.stream for the arguments and the items. The returned Stream is
        an iterator: the stream opens on the first ``next()`` (or ``open()``, or
        ``update()``) and closes when it is exhausted, on ``close()``, or at the end
        of a ``with`` block.
        """
        aclient = AsyncClient(self.url, self.api_key, self.timeout, _client=self)
        return Stream(aclient.stream(images, transport=transport, fps=fps, top_k=top_k,
                                     retry_rate_limited=retry_rate_limited, token=token, mode=mode,
                                     session=session, resume=resume, max_resume_attempts=max_resume_attempts))


async def _step(agen: Any) -> Tuple[bool, Any]:
    try:
        return True, await agen.__anext__()
    except StopAsyncIteration:
        return False, None


class _LoopThread:
    """An event loop running in a daemon thread, to drive async code from sync code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="infergate-stream", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Any) -> Any:
        """Run coro on the loop and return its result. If the caller is interrupted
        (Ctrl-C), the task is cancelled and its cleanup (closing the stream) is
        waited for before the interruption goes on."""
        done = threading.Event()
        box: Dict[str, Any] = {}

        def finished(task: "asyncio.Task[Any]") -> None:
            if task.cancelled():
                box["exc"] = asyncio.CancelledError()
            elif task.exception() is not None:
                box["exc"] = task.exception()
            else:
                box["result"] = task.result()
            done.set()

        def start() -> None:
            task = self.loop.create_task(coro)
            box["task"] = task
            task.add_done_callback(finished)

        self.loop.call_soon_threadsafe(start)
        try:
            done.wait()
        except BaseException:
            def cancel() -> None:
                task = box.get("task")
                if task is not None:
                    task.cancel()

            self.loop.call_soon_threadsafe(cancel)
            done.wait(15)
            raise
        if "exc" in box:
            raise box["exc"]
        return box.get("result")

    def stop(self) -> None:
        async def shutdown() -> None:
            await self.loop.shutdown_asyncgens()
            await self.loop.shutdown_default_executor()

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(timeout=10)
        except BaseException:
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        if not self.thread.is_alive():
            self.loop.close()


class Stream:
    """One stream of a synchronous Client (``Client.stream``): an iterator of items,
    one per input image, in input order.

    It drives an AsyncStream on an event loop of its own, in a background thread.
    ``update`` may be called between items, or from another thread while one
    thread iterates. The attributes (``session``, ``ready``, ...) are those of the
    AsyncStream.
    """

    def __init__(self, astream: "AsyncStream") -> None:
        self._a = astream
        self._runner: Optional[_LoopThread] = None
        self._done = False
        self._lock = threading.Lock()  # guards _runner

    def __repr__(self) -> str:
        return f"<infergate Stream transport={self.transport!r} session_id={self.session_id!r}>"

    def _call(self, coro: Any) -> Any:
        with self._lock:
            if self._runner is None:
                if self._done:
                    coro.close()
                    raise TransportError("the stream is closed")
                self._runner = _LoopThread()
            runner = self._runner
        return runner.call(coro)

    def __iter__(self) -> "Stream":
        return self

    def __next__(self) -> Dict[str, Any]:
        if self._done:
            raise StopIteration
        try:
            more, item = self._call(_step(self._a))
        except BaseException:
            self.close()
            raise
        if not more:
            self.close()
            raise StopIteration
        return item

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def open(self) -> "Stream":
        """Open the stream now (authenticate, read ``ready``) rather than on the first
        ``next()``. Raises what opening raises (AuthError, ConnectionLimitError, ...)."""
        try:
            self._call(self._a.open())
        except BaseException:
            self.close()
            raise
        return self

    def update(self, mode: Optional[str] = None, top_k: Optional[int] = None,
               fps: Optional[int] = None) -> Dict[str, Any]:
        """Change the stream's settings (``session.update``); see AsyncStream.update."""
        return self._call(self._a.update(mode=mode, top_k=top_k, fps=fps))

    def close(self) -> None:
        """Close the stream (a WebSocket close, or ``DELETE /v1/sessions/{id}``).
        Safe to call more than once."""
        with self._lock:
            self._done = True
            runner, self._runner = self._runner, None
        if runner is None:
            return
        try:
            runner.call(self._a.aclose())
        except BaseException:
            pass
        runner.stop()

    def __del__(self) -> None:
        # Like a generator's: an abandoned stream is closed. Never from the loop's
        # own thread (the call would wait for itself).
        runner = getattr(self, "_runner", None)
        if runner is not None and threading.current_thread() is not runner.thread:
            try:
                self.close()
            except Exception:
                pass

    transport = property(lambda self: self._a.transport)
    session = property(lambda self: self._a.session)
    ready = property(lambda self: self._a.ready)
    session_id = property(lambda self: self._a.session_id)
    limits = property(lambda self: self._a.limits)
    resumes = property(lambda self: self._a.resumes)


class AsyncClient:
    """The asyncio client. Same constructor as Client; every method is a coroutine,
    and ``stream`` is an async generator."""

    def __init__(self, url: str = DEFAULT_URL, api_key: Optional[str] = None, timeout: float = 30,
                 *, _client: Optional[Client] = None) -> None:
        self._sync = _client or Client(url, api_key, timeout)
        self.url = self._sync.url
        self.api_key = self._sync.api_key
        self.timeout = self._sync.timeout

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._sync.close()

    async def classify(self, image: Any, top_k: int = 5) -> Dict[str, Any]:
        return await asyncio.to_thread(self._sync.classify, image, top_k)

    async def usage(self, since: Union[str, _dt.datetime, None] = None) -> Dict[str, Any]:
        return await asyncio.to_thread(self._sync.usage, since)

    async def model_info(self) -> Dict[str, Any]:
        return await asyncio.to_thread(self._sync.model_info)

    async def mint_token(self, ttl_seconds: int = 60, session: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        return await asyncio.to_thread(self._sync.mint_token, ttl_seconds, session)

    def stream(
        self,
        images: Any,
        transport: str = "auto",
        fps: Union[float, str, None] = None,
        top_k: Optional[int] = None,
        retry_rate_limited: bool = False,
        token: Optional[str] = None,
        mode: Optional[str] = None,
        session: Optional[Dict[str, Any]] = None,
        resume: bool = True,
        max_resume_attempts: int = 5,
    ) -> "AsyncStream":
        """Classify many images over one stream, pipelined: ``async for`` the returned
        AsyncStream for one dict per image, in input order.

        ``images``: an iterable (or async iterable) of paths, bytes or binary files;
        it is read lazily, so it may be endless (a camera).

        ``transport``: ``"ws"`` (WebSocket ``/v1/stream``), ``"sse"`` (``POST
        /v1/sessions``, results on the event stream, frames POSTed), ``"post"`` (one
        ``POST /v1/classify`` per image, up to 4 at once), or ``"auto"``: the first of
        ws, sse, post that opens. An authentication failure is raised at once, never
        skipped over.

        Settings of the stream (version 1.1 servers), sent when it opens: ``mode``
        (``"ordered"``, every frame answered, or ``"latest"``, only the newest frame
        waits for the model and the ones it replaces are yielded as Skipped items),
        ``top_k`` (predictions per result, 1-20; the server's default is 5) and, in
        ``session``, any of ``{"mode", "top_k", "fps"}``: ``fps`` there is the
        stream's own frame limit, at most the user's frames_per_second. Change them
        later with ``update``. POST has only ``top_k``; ``mode`` or a session ``fps``
        with ``transport="post"`` is a ValueError, and ``"auto"`` then tries ws and
        sse only.

        ``fps`` (not a setting: the client's pacing): send at most this many frames
        per second (None: as fast as the server answers; ``"auto"``: the stream's own
        limit, ``limits.frames`` of ``ready``, which follows ``update(fps=...)``).

        ``retry_rate_limited``: a frame answered ``rate_limited`` is sent again after
        the ``retry_after_ms`` the server gave, keeping its place in the output order.

        ``resume`` (WebSocket): when the connection drops without a close frame, open
        a new one and resume the session (``ready.resume``): the server sends again
        the answers the client missed, and the client sends again the frames the
        server never read, so every frame still gets exactly one item, in order. Up
        to ``max_resume_attempts`` connections are tried per drop, with a backoff from
        0.1 s doubling to 2 s, within the server's resume window. A session that
        cannot be resumed raises ResumeError (after the items that were complete).

        Up to the server's ``max_in_flight`` frames are outstanding at once (32 in
        latest mode). Each item has ``id`` (the input's index), ``seq`` (the server's
        sequence number; for POST, the client's send count), ``transport``,
        ``source`` (the path, or "<bytes>"), ``attempts``, ``rtt_ms`` (client-side,
        send to answer), and either the server's ``model``, ``predictions``,
        ``inference_ms``, ``latency_ms``, ``timing`` (``queue_ms``, ``decode_ms``,
        ``preprocess_ms``, ``inference_ms``, ``log_ms``), ``batch`` and any other
        field of the server's result (POST has none of these times); or ``error``:
        ``{"code", "message", ...}`` for a frame the server (or the client, for a file
        it cannot read) refused; or, in latest mode, ``skipped: True`` with
        ``superseded_by`` (the seq of the newer frame that replaced it) and
        ``superseded_by_id`` (that frame's input index): such an item is a Skipped.
        A failure of the whole stream (authentication, connection lost, too many
        streams) raises InfergateError after the items that were complete.

        ``token``: a client token (``mint_token``) to open the stream with, instead of
        the API key. It opens one stream, once, so it takes ``"ws"``, ``"sse"`` or
        ``"auto"`` (which then tries ws only: a refused WebSocket has spent it). Its
        settings from minting are the starting ones; the settings given here apply on
        top. A token stream resumes with the resume token of its ``ready``.
        """
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, not {transport!r}")
        if token is not None and transport == "post":
            raise ValueError("a client token opens a stream (ws or sse), not POST requests")
        if fps is not None and fps != "auto":
            fps = float(fps)
            if not fps > 0:
                raise ValueError("fps must be positive")
        settings = _settings(mode, top_k, session)
        if transport == "post" and settings and set(settings) - {"top_k"}:
            raise ValueError("mode and the stream's fps are settings of a stream (ws or sse), not of POST")
        if int(max_resume_attempts) < 1:
            raise ValueError("max_resume_attempts must be at least 1")
        return AsyncStream(self, images, transport=transport, fps=fps, retry=retry_rate_limited,
                           token=token, settings=settings, resume=bool(resume),
                           max_resume_attempts=int(max_resume_attempts))

    async def _open(self, transport: str, token: Optional[str] = None,
                    settings: Optional[Dict[str, Any]] = None, resume: bool = True,
                    max_resume_attempts: int = 5) -> "_Adapter":
        order = ["ws", "sse", "post"] if transport == "auto" else [transport]
        client = self._sync
        if token is not None:
            if transport == "auto":
                order = ["ws"]
            # The adapters authenticate with client.api_key: a copy carries the token.
            client = copy.copy(self._sync)
            client.api_key = token
        if transport == "auto" and settings and set(settings) - {"top_k"}:
            order = [n for n in order if n != "post"]
        failures: List[str] = []
        last: Optional[InfergateError] = None
        for name in order:
            adapter = _ADAPTERS[name](client)
            adapter.configure(settings=settings, token=token, resume=resume,
                              max_resume_attempts=max_resume_attempts)
            try:
                await adapter.open()
                return adapter
            except BaseException as e:
                await adapter.close()
                if transport != "auto" or not isinstance(
                        e, (TransportError, ConnectionLimitError, OverloadedError)):
                    raise
                failures.append(f"{name}: {e}")
                last = e
        assert last is not None
        raise type(last)("no transport could be opened (" + "; ".join(failures) + ")",
                         code=last.code, status=last.status)


def _settings(mode: Optional[str], top_k: Optional[int],
              session: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The settings object to open a stream with, or None. Values are the server's to
    judge (it answers invalid_request); only the names are checked here."""
    st: Dict[str, Any] = {}
    if session is not None:
        if not isinstance(session, dict):
            raise TypeError("session is a dict of settings: mode, top_k, fps")
        unknown = sorted(set(session) - set(_SETTINGS))
        if unknown:
            raise ValueError(f"unknown stream settings {unknown}: a stream has {', '.join(_SETTINGS)}")
        st.update({k: v for k, v in session.items() if v is not None})
    if mode is not None:
        st["mode"] = mode
    if top_k is not None:
        st["top_k"] = top_k
    return st or None


class AsyncStream:
    """One stream of an AsyncClient (``AsyncClient.stream``): an async iterator of
    items, one per input image, in input order.

    The stream opens on the first ``__anext__`` (or ``open()`` or ``update()``), and
    closes when it is exhausted, on ``aclose()``, or at the end of an ``async with``
    block. Attributes, once open:

    - ``transport``: ``"ws"``, ``"sse"`` or ``"post"`` (None before it opens).
    - ``ready``: the server's ``ready`` message (WebSocket and SSE), as a dict.
    - ``session``: the settings in force, ``{"mode", "top_k", "fps"}``, from
      ``ready.session`` and then from each ``session.updated`` (None from a server
      older than 1.1, and for POST).
    - ``session_id``, ``limits`` (``ready.limits``; ``frames`` follows the fps in
      force), ``resumes`` (how many times a dropped WebSocket was resumed).
    """

    def __init__(self, client: AsyncClient, images: Any, *, transport: str, fps: Union[float, str, None],
                 retry: bool, token: Optional[str], settings: Optional[Dict[str, Any]], resume: bool,
                 max_resume_attempts: int) -> None:
        self._client = client
        self._images = images
        self._transport = transport
        self._fps = fps
        self._retry = retry
        self._token = token
        self._settings = settings
        self._resume = resume
        self._max_resume_attempts = max_resume_attempts
        self._adapter: Optional[_Adapter] = None
        self._engine: Optional[_Engine] = None
        self._results: Any = None
        self._open_lock: Optional[asyncio.Lock] = None
        self._finished = False
        self._closed = False

    def __repr__(self) -> str:
        return f"<infergate AsyncStream transport={self.transport!r} session_id={self.session_id!r}>"

    @property
    def transport(self) -> Optional[str]:
        return self._adapter.name if self._adapter is not None else None

    @property
    def session(self) -> Optional[Dict[str, Any]]:
        s = self._adapter.session if self._adapter is not None else None
        return dict(s) if s is not None else None

    @property
    def ready(self) -> Optional[Dict[str, Any]]:
        return self._adapter.ready if self._adapter is not None else None

    @property
    def session_id(self) -> Optional[str]:
        return self._adapter.session_id if self._adapter is not None else None

    @property
    def limits(self) -> Optional[Dict[str, Any]]:
        return dict(self._adapter.limits) if self._adapter is not None else None

    @property
    def resumes(self) -> int:
        return self._adapter.resumes if self._adapter is not None else 0

    async def open(self) -> "AsyncStream":
        """Open the stream now rather than on the first item. Raises what opening
        raises (AuthError, ConnectionLimitError, InvalidRequestError for bad
        settings, ...)."""
        if self._open_lock is None:
            self._open_lock = asyncio.Lock()
        async with self._open_lock:
            if self._closed:
                raise TransportError("the stream is closed")
            if self._adapter is None:
                adapter = await self._client._open(self._transport, self._token, self._settings,
                                                   self._resume, self._max_resume_attempts)
                engine = _Engine(adapter, fps=self._fps, retry=self._retry,
                                 frame_timeout=max(60.0, 2.0 * float(self._client.timeout)))
                self._results = engine.run(self._images)
                adapter.start(engine)
                self._adapter, self._engine = adapter, engine
        return self

    def __aiter__(self) -> "AsyncStream":
        return self

    async def __anext__(self) -> Dict[str, Any]:
        if self._finished:
            raise StopAsyncIteration
        try:
            await self.open()
            return await self._results.__anext__()
        except BaseException:  # the end, a failure, or a cancellation: close
            self._finished = True
            await self._shutdown()
            raise

    async def __aenter__(self) -> "AsyncStream":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the stream (a WebSocket close, or ``DELETE /v1/sessions/{id}``)."""
        self._finished = True
        await self._shutdown()

    async def _shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._results is not None:
            try:
                await self._results.aclose()
            except RuntimeError:
                pass  # being iterated by another task: the engine's stop ends it
        if self._engine is not None:
            await self._engine.stop()
        if self._adapter is not None:
            await self._adapter.close()

    async def update(self, mode: Optional[str] = None, top_k: Optional[int] = None,
                     fps: Optional[int] = None) -> Dict[str, Any]:
        """Change the stream's settings (``session.update``) and return the settings
        now in force, ``{"mode", "top_k", "fps"}``, which ``session`` also holds then.

        The update takes its place among the frames: the frames sent before it keep
        the old settings, and it returns once they are answered and the server has
        applied it. A value the server refuses (``fps`` above the user's limit or
        below 1, an unknown ``mode``, ``top_k`` out of range) raises
        InvalidRequestError and changes nothing; the stream goes on. Over a
        WebSocket an update survives a resume (it is sent again if its answer was
        lost). POST has no settings: InvalidRequestError.
        """
        settings = {k: v for k, v in (("mode", mode), ("top_k", top_k), ("fps", fps)) if v is not None}
        if not settings:
            raise ValueError("update needs at least one of mode, top_k, fps")
        await self.open()
        assert self._adapter is not None
        if self._finished:
            raise TransportError("the stream has ended")
        return await self._adapter.update(settings)


class _Job:
    __slots__ = ("index", "source", "data", "attempts", "seq", "sent_at")

    def __init__(self, index: int, source: str) -> None:
        self.index = index
        self.source = source
        self.data: Optional[bytes] = None
        self.attempts = 0
        self.seq: Optional[int] = None
        self.sent_at = 0.0


_END = object()


class _Engine:
    """Sends frames through an adapter with pipelining, pacing and retries, and puts
    the answers back in input order. Everything runs on one event loop; adapters
    that read in threads hand answers over with call_soon_threadsafe."""

    def __init__(self, adapter: "_Adapter", fps: Union[float, str, None], retry: bool,
                 frame_timeout: float = 60.0) -> None:
        self.adapter = adapter
        # A frame unanswered for this long means the transport lost it.
        self.frame_timeout = frame_timeout
        self.fps = fps
        self.retry = retry
        self.max_message_bytes = adapter.limits.get("max_message_bytes")

        self.created = 0  # inputs taken
        self.next_yield = 0
        self.exhausted = False
        self.done_sending = False
        self.unresolved = 0  # taken, not yet final
        self.outstanding = 0  # sent, not yet answered
        self.inflight: Dict[int, _Job] = {}
        self.by_seq: Dict[int, int] = {}  # seq -> index, of the frames in flight
        # seq -> index of every frame numbered and not yet yielded, for the
        # superseded_by_id of Skipped items.
        self.seq_index: Dict[int, int] = {}
        self.retry_heap: List[Tuple[int, int, _Job]] = []
        self.results: Dict[int, Dict[str, Any]] = {}
        self.fatal: Optional[BaseException] = None
        self.next_send_at = 0.0
        self.not_before = 0.0
        self._wake_sender = asyncio.Event()
        self._wake_yield = asyncio.Event()
        self._sender: Optional[asyncio.Task] = None

    @property
    def max_in_flight(self) -> int:
        """Frames outstanding at most: the stream's max_in_flight, more in latest mode
        (see _LATEST_IN_FLIGHT). It follows the mode in force."""
        n = max(1, int(self.adapter.limits.get("max_in_flight") or 4))
        if (self.adapter.session or {}).get("mode") == "latest":
            n = max(n, _LATEST_IN_FLIGHT)
        return n

    @property
    def max_ahead(self) -> int:
        """Inputs read but not yet yielded, at most (bounds memory when the consumer
        is slower than the server)."""
        return max(32, 4 * self.max_in_flight)

    def interval(self) -> float:
        """Seconds between two sends; with fps="auto", from the limit in force."""
        if self.fps == "auto":
            limits = self.adapter.limits
            frames, window = limits.get("frames"), limits.get("window_ms") or 1000
            return _PACE_SLACK * (window / 1000.0) / float(frames) if frames else 0.0
        return _PACE_SLACK / float(self.fps) if self.fps else 0.0

    # -- state changes (all on the loop) ------------------------------------------

    def _notify(self) -> None:
        self._wake_sender.set()
        self._wake_yield.set()

    def fail(self, exc: BaseException) -> None:
        """The stream as a whole failed (connection lost, key revoked, ...)."""
        if self.fatal is None and not self.done_sending:
            self.fatal = exc
        self._notify()

    def closed(self, exc: BaseException) -> None:
        """The transport ended: an error only if work is left."""
        if self.unresolved or not self.exhausted:
            self.fail(exc)

    def note_seq(self, job: _Job, seq: Optional[int]) -> None:
        """The frame of job was numbered seq (as the server will number it)."""
        if seq is None:
            return
        if job.seq is not None and self.by_seq.get(job.seq) == job.index:
            del self.by_seq[job.seq]
        job.seq = seq
        self.by_seq[seq] = job.index
        self.seq_index[seq] = job.index
        self._wake_yield.set()  # a Skipped item may wait for this seq

    def settings_changed(self) -> None:
        """The mode or the fps in force changed: the sender's bounds may have too."""
        self._notify()

    def _finish(self, job: _Job, item: Dict[str, Any]) -> None:
        job.data = None
        self.results[job.index] = item
        self.unresolved -= 1
        self._notify()

    def _base_item(self, job: _Job, seq: Any) -> Dict[str, Any]:
        return {"id": job.index, "seq": seq, "transport": self.adapter.name, "source": job.source}

    def _local_error(self, job: _Job, code: str, message: str) -> None:
        item = self._base_item(job, None)
        item["error"] = {"code": code, "message": message}
        item["attempts"] = job.attempts
        self._finish(job, item)

    def answer(self, msg: Dict[str, Any]) -> None:
        """A result, error or skipped message for a frame (WebSocket/SSE message format)."""
        idx = msg.get("id")
        if not (isinstance(idx, int) and not isinstance(idx, bool)):
            # No id of ours (the server could not read the frame's): by seq.
            idx = self.by_seq.get(msg.get("seq"))  # type: ignore[arg-type]
        job = self.inflight.pop(idx, None) if idx is not None else None
        if job is None:
            return  # a duplicate, or not ours: nothing waits for it
        if job.seq is not None:
            self.by_seq.pop(job.seq, None)
        self.outstanding -= 1
        now = time.monotonic()
        rtt = round((now - job.sent_at) * 1000.0, 2)
        seq = msg.get("seq", job.seq)
        if msg.get("type") == "skipped":
            skipped = Skipped(self._base_item(job, seq))
            skipped["skipped"] = True
            by = msg.get("superseded_by")
            skipped["superseded_by"] = by
            skipped["superseded_by_id"] = self.seq_index.get(by) if isinstance(by, int) else None
            for k, v in msg.items():
                if k not in ("type", "id", "seq", "superseded_by"):
                    skipped[k] = v
            skipped["attempts"] = job.attempts
            skipped["rtt_ms"] = rtt
            self._finish(job, skipped)
            return
        if msg.get("type") == "result":
            item = self._base_item(job, seq)
            for k, v in msg.items():
                if k not in ("type", "id", "seq"):
                    item[k] = v
            item["attempts"] = job.attempts
            item["rtt_ms"] = rtt
            self._finish(job, item)
            return
        code = msg.get("code") or "error"
        retry_ms = msg.get("retry_after_ms")
        if code == "rate_limited" and self.retry and job.attempts < _MAX_ATTEMPTS:
            wait = (retry_ms / 1000.0 if isinstance(retry_ms, (int, float)) else 0.1) + _RETRY_MARGIN
            self.not_before = max(self.not_before, now + wait)
            heapq.heappush(self.retry_heap, (job.index, id(job), job))
            self._notify()
            return
        err: Dict[str, Any] = {"code": code, "message": msg.get("message", "")}
        for k, v in msg.items():
            if k not in ("type", "id", "seq", "code", "message"):
                err[k] = v
        item = self._base_item(job, seq)
        item["error"] = err
        item["attempts"] = job.attempts
        item["rtt_ms"] = rtt
        self._finish(job, item)

    # -- sending -----------------------------------------------------------------

    async def _next_input(self, it: Any, is_async: bool) -> Any:
        if is_async:
            try:
                return await it.__anext__()
            except StopAsyncIteration:
                return _END
        if isinstance(it, _ListIter):
            return it.next()
        return await asyncio.to_thread(next, it, _END)

    async def _pace(self) -> None:
        while True:
            wait = max(self.next_send_at, self.not_before) - time.monotonic()
            if wait <= 0 or self.fatal is not None:
                break
            await asyncio.sleep(wait)
        interval = self.interval()
        if interval:
            self.next_send_at = time.monotonic() + interval

    def _frame_too_big(self, job: _Job) -> bool:
        if not self.max_message_bytes or self.adapter.name == "post":
            return False
        assert job.data is not None
        return 4 * ((len(job.data) + 2) // 3) + 100 > int(self.max_message_bytes)

    async def _send_loop(self, images: Any) -> None:
        is_async = hasattr(images, "__aiter__")
        if is_async:
            it = images.__aiter__()
        elif isinstance(images, (list, tuple)):
            it = _ListIter(images)
        else:
            it = iter(images)
        try:
            while True:
                while True:
                    if self.fatal is not None:
                        return
                    if self.outstanding < self.max_in_flight:
                        if self.retry_heap:
                            break
                        if not self.exhausted and self.created - self.next_yield < self.max_ahead:
                            break
                    if self.exhausted and not self.retry_heap and self.unresolved == 0:
                        self.done_sending = True
                        self._notify()
                        return
                    self._wake_sender.clear()
                    await self._wake_sender.wait()
                if self.retry_heap:
                    job = heapq.heappop(self.retry_heap)[2]
                else:
                    image = await self._next_input(it, is_async)
                    if image is _END:
                        self.exhausted = True
                        continue
                    job = _Job(self.created, source_of(image))
                    self.created += 1
                    self.unresolved += 1
                    try:
                        if isinstance(image, (bytes, bytearray, memoryview)):
                            job.data = bytes(image)
                        else:
                            job.data, job.source = await asyncio.to_thread(load_image, image)
                    except (OSError, TypeError) as e:
                        self._local_error(job, "unreadable", f"cannot read {job.source}: {e}")
                        continue
                    if self._frame_too_big(job):
                        self._local_error(job, "image_too_large",
                                          f"{len(job.data)} bytes is over the stream's max_message_bytes "
                                          f"({self.max_message_bytes}) once base64-encoded")
                        continue
                # Encode first, so that pacing times the sends themselves.
                message = await self.adapter.prepare(job)
                await self._pace()
                if self.fatal is not None:
                    return
                job.attempts += 1
                job.sent_at = time.monotonic()
                self.outstanding += 1
                self.inflight[job.index] = job
                seq = await self.adapter.send(job, message)
                if seq is not None and job.index in self.inflight:
                    self.note_seq(job, seq)
        except asyncio.CancelledError:
            raise
        except InfergateError as e:
            self.fail(e)
        except Exception as e:  # an input iterator's own error, or a bug: surface it
            self.fail(e)

    async def _superseder(self, item: Dict[str, Any]) -> None:
        """Fill in a Skipped item's superseded_by_id. Over SSE the newer frame's seq
        is known when its POST is answered, which may come after the skipped event:
        wait for it a little (it is on its way)."""
        by = item.get("superseded_by")
        if item.get("superseded_by_id") is not None or not isinstance(by, int):
            return
        deadline = time.monotonic() + 5.0
        while by not in self.seq_index and self.fatal is None and time.monotonic() < deadline:
            self._wake_yield.clear()
            try:
                await asyncio.wait_for(self._wake_yield.wait(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                break
        item["superseded_by_id"] = self.seq_index.get(by)

    async def run(self, images: Any) -> AsyncIterator[Dict[str, Any]]:
        self._sender = asyncio.create_task(self._send_loop(images))
        while True:
            while self.next_yield in self.results:
                item = self.results[self.next_yield]
                if isinstance(item, Skipped):
                    await self._superseder(item)
                del self.results[self.next_yield]
                self.next_yield += 1
                self._wake_sender.set()
                if len(self.seq_index) > 2 * self.max_in_flight:
                    self.seq_index = {s: i for s, i in self.seq_index.items() if i >= self.next_yield}
                yield item
            if self.fatal is not None:
                raise self.fatal
            if self.done_sending and self.next_yield >= self.created:
                return
            if self._sender.done() and self.fatal is None and not self.done_sending:
                exc = self._sender.exception() if not self._sender.cancelled() else None
                raise TransportError(f"the sender stopped unexpectedly: {exc!r}")
            self._wake_yield.clear()
            try:
                await asyncio.wait_for(self._wake_yield.wait(), 5.0)
            except asyncio.TimeoutError:
                self._check_stalled()

    def _check_stalled(self) -> None:
        if not self.inflight:
            return
        oldest = min(j.sent_at for j in self.inflight.values())
        if time.monotonic() - oldest > self.frame_timeout:
            self.fail(TransportError(
                f"no answer to a frame within {self.frame_timeout:.0f} s over {self.adapter.name}"))

    async def stop(self) -> None:
        if self._sender is not None and not self._sender.done():
            self._sender.cancel()
            try:
                await self._sender
            except BaseException:
                pass


class _ListIter:
    """Iterates a list or tuple without a thread hop per item."""

    def __init__(self, seq: Any) -> None:
        self.seq = seq
        self.i = 0

    def next(self) -> Any:
        if self.i >= len(self.seq):
            return _END
        self.i += 1
        return self.seq[self.i - 1]


def _frame_json(job: _Job) -> str:
    """A frame message. It carries no top_k: the stream's setting applies."""
    assert job.data is not None
    return json.dumps({"type": "frame", "id": job.index, "image": base64.b64encode(job.data).decode("ascii")})


async def _frame_json_async(job: _Job) -> str:
    """_frame_json, off the event loop for large images (base64 of megabytes takes a while)."""
    assert job.data is not None
    if len(job.data) > 256 * 1024:
        return await asyncio.to_thread(_frame_json, job)
    return _frame_json(job)


class Skipped(dict):
    """The item of a frame that a newer one replaced before the model took it
    (latest mode): ``{"id", "seq", "transport", "source", "skipped": True,
    "superseded_by": <seq>, "superseded_by_id": <input index>, "attempts",
    "rtt_ms"}``, with no ``predictions`` and no ``error``."""


# -- transports -------------------------------------------------------------------


class _Adapter:
    name = ""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.limits: Dict[str, Any] = dict(_DEFAULT_LIMITS)
        self.engine: Optional[_Engine] = None
        self.settings: Optional[Dict[str, Any]] = None  # to open with
        self.token: Optional[str] = None  # a client token (then client.api_key is it too)
        self.resume = True
        self.max_resume_attempts = 5
        self.ready: Optional[Dict[str, Any]] = None
        self.session: Optional[Dict[str, Any]] = None  # the settings in force
        self.session_id: Optional[str] = None
        self.resumes = 0

    def configure(self, settings: Optional[Dict[str, Any]], token: Optional[str], resume: bool,
                  max_resume_attempts: int) -> None:
        self.settings = settings
        self.token = token
        self.resume = resume
        self.max_resume_attempts = max_resume_attempts

    def _set_session(self, session: Any) -> None:
        """Settings in force from the server (ready, session.updated)."""
        if not isinstance(session, dict):
            return
        self.session = dict(session)
        if isinstance(session.get("fps"), int):
            self.limits["frames"] = session["fps"]  # ready.limits.frames is the fps in force
        if self.engine is not None:
            self.engine.settings_changed()

    def _take_ready(self, ready: Dict[str, Any]) -> None:
        self.ready = ready
        self.limits.update(ready.get("limits") or {})
        if isinstance(ready.get("session_id"), str):
            self.session_id = ready["session_id"]
        self._set_session(ready.get("session"))

    async def open(self) -> None:
        raise NotImplementedError

    def start(self, engine: _Engine) -> None:
        self.engine = engine

    async def prepare(self, job: _Job) -> Any:
        """Encode a frame for send (may take a while for a large image)."""
        return await _frame_json_async(job)

    async def send(self, job: _Job, message: Any) -> Optional[int]:
        """Send a prepared frame; return its seq when known (None when the adapter
        told the engine itself)."""
        raise NotImplementedError

    async def update(self, settings: Dict[str, Any]) -> Dict[str, Any]:
        raise InvalidRequestError(f"a stream over {self.name} has no settings to update",
                                  code="invalid_request")

    async def close(self) -> None:
        pass


def _websockets_connect() -> Tuple[Any, str, Any]:
    """The installed websockets' connect function, the name of its extra-headers
    argument (``additional_headers`` in the new client of 13+, ``extra_headers`` in the
    legacy one), and its exceptions module."""
    try:
        import websockets  # noqa: F401
        import websockets.exceptions as wsexc
    except ImportError as e:
        raise TransportError(
            "the WebSocket transport needs the 'websockets' package "
            "(Debian: apt-get install python3-websockets)", code="websockets_missing"
        ) from e
    try:
        from websockets.asyncio.client import connect  # websockets >= 13
    except ImportError:
        try:
            from websockets.client import connect  # type: ignore[no-redef,attr-defined]  # websockets 10-12
        except ImportError:
            from websockets import connect  # type: ignore[no-redef,attr-defined]
    try:
        params = inspect.signature(connect).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    header_arg = "additional_headers" if "additional_headers" in params else "extra_headers"
    return connect, header_arg, wsexc


def _close_info(ws: Any, exc: Optional[BaseException]) -> Tuple[Optional[int], str]:
    for obj in (getattr(exc, "rcvd", None), exc, ws):
        if obj is None:
            continue
        code = getattr(obj, "code", None) if obj is not ws else getattr(ws, "close_code", None)
        if isinstance(code, int):
            reason = getattr(obj, "reason", None) if obj is not ws else getattr(ws, "close_reason", None)
            return code, reason or ""
    return None, ""


def _close_frame_received(exc: Optional[BaseException]) -> bool:
    """Whether a WebSocket ended with a close frame from the server, as opposed to a
    connection lost (network, proxy, a socket closed under it): only the latter is
    resumable. exc is the ConnectionClosed it ended with, None for a clean end."""
    if exc is None:
        return True  # iteration ended normally: the server closed with 1000 or 1001
    if hasattr(exc, "rcvd"):  # websockets >= 10
        return getattr(exc, "rcvd", None) is not None
    return getattr(exc, "code", None) not in (None, 1006)


class _Sent:
    """A message of the stream sent and not yet answered: a frame or a session.update.
    Kept to be sent again when a resumed session has not read it."""

    __slots__ = ("kind", "payload", "job", "seq", "order", "future")

    def __init__(self, kind: str, payload: Any, order: int, job: Optional[_Job] = None,
                 seq: Optional[int] = None, future: Optional["asyncio.Future[Any]"] = None) -> None:
        self.kind = kind
        self.payload = payload
        self.order = order  # send order, across frames and updates
        self.job = job
        self.seq = seq  # frames: the seq the server gives it, if it reads it
        self.future = future  # updates: resolved by session.updated


class _WSAdapter(_Adapter):
    """The WebSocket ``/v1/stream``.

    Opens with the Authorization header, or, with settings to open with, with a first
    auth message that carries them. One reader task takes every message; the
    engine's sender and ``update`` write under ``lock``, so the order of frames and
    updates on the wire is the order of ``order``. Each message sent stays in
    ``frames`` or ``updates`` until answered: when the connection drops without a
    close frame, the reader resumes the session on a new connection, and sends again
    what the server had not read (frames numbered beyond its ``received_seq``, and
    the updates not answered: an update holds absolute values, so applying one twice
    is harmless, and its answer, unlike the frames' ones, is not replayed).
    """

    name = "ws"

    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self.ws: Any = None
        self.reader: Optional[asyncio.Task] = None
        self.resender: Optional[asyncio.Task] = None
        self.closing = False
        self.sent = 0  # frames numbered so far: the seq of the last one
        self.order = 0
        self.wsexc: Any = None
        self.lock: Optional[asyncio.Lock] = None  # guards ws writes, sent, order, frames, updates
        self.frames: Dict[int, _Sent] = {}  # by seq, ascending
        self.updates: Deque[_Sent] = deque()
        self.last_seq = 0  # seq of the last answer received
        self.resume_info: Dict[str, Any] = {}
        self.duplicates = 0  # answers dropped as already received (none from a correct server)
        self.resent = 0  # frames sent again after a resume (the server had not read them)
        self.renumbered = 0  # times the server's seqs ran ahead of the client's count

    async def open(self) -> None:
        self.lock = asyncio.Lock()
        self.ws, ready = await self._connect()
        self._take_ready(ready)

    def _take_ready(self, ready: Dict[str, Any]) -> None:
        super()._take_ready(ready)
        if isinstance(ready.get("resume"), dict):
            # The resume token comes once, in the first ready, and stays good: a
            # resumed ready leaves it out.
            token = self.resume_info.get("token")
            self.resume_info = dict(ready["resume"])
            if token and not self.resume_info.get("token"):
                self.resume_info["token"] = token

    async def _connect(self, resume: Optional[Tuple[str, int]] = None) -> Tuple[Any, Dict[str, Any]]:
        """Open a connection and read its ready message: a new stream, or, with
        resume=(session_id, last_seq), the resumption of one."""
        cred = self.client.api_key
        route = "/v1/stream"
        headers: Dict[str, str] = {}
        first: Optional[Dict[str, Any]] = None
        if resume is None:
            headers = auth_headers(cred)  # raises AuthError without a key
            if self.settings:
                # Settings ride on a first-message auth (the header has no room for them).
                first = {"type": "auth", ("token" if self.token else "api_key"): cred, "session": self.settings}
                headers = {}
        else:
            sid, last = resume
            if self.token is None:
                headers = auth_headers(cred)
                route += f"?resume={quote(sid, safe='')}&last_seq={int(last)}"
            else:
                # The client token is spent: the session's resume token stands in for it.
                rt = self.resume_info.get("token")
                if not rt:
                    raise ResumeError("the server gave no resume token for this client-token stream",
                                      reason="no_token")
                first = {"type": "auth", "resume": {"session_id": sid, "last_seq": int(last), "token": rt}}
        connect, header_arg, wsexc = _websockets_connect()
        self.wsexc = wsexc
        headers["User-Agent"] = USER_AGENT
        kwargs: Dict[str, Any] = {header_arg: headers, "open_timeout": self.client.timeout,
                                  "max_size": 16 << 20, "compression": None}
        try:
            params = inspect.signature(connect).parameters
            if "proxy" in params:
                kwargs["proxy"] = None  # never route a named server through an env proxy
            if "user_agent_header" in params:
                kwargs["user_agent_header"] = USER_AGENT
                headers.pop("User-Agent")
        except (TypeError, ValueError):
            pass
        url = self.client._http.ws_url(route)
        try:
            ws = await connect(url, **kwargs)
        except AuthError:
            raise
        except Exception as e:
            raise self._handshake_error(e) from e
        try:
            if first is not None:
                await ws.send(json.dumps(first))
            raw = await asyncio.wait_for(ws.recv(), self.client.timeout)
            msg = _parse_json(raw)
            if msg.get("type") != "ready":
                raise TransportError(f"expected a ready message, got {str(raw)[:120]!r}")
        except asyncio.TimeoutError as e:
            await _close_quietly(ws)
            raise TransportError("the WebSocket sent no ready message") from e
        except wsexc.ConnectionClosed as e:
            code, reason = _close_info(ws, e)
            if resume is not None and code == 4401 and reason.startswith("resume failed"):
                raise ResumeError(f"the server could not resume session {resume[0]}: {reason}",
                                  reason=_resume_reason(reason), status=code) from e
            raise error_from_close(code, reason) from e
        except BaseException:
            await _close_quietly(ws)
            raise
        return ws, msg

    def _handshake_error(self, e: Exception) -> InfergateError:
        status, headers, body = None, {}, b""
        resp = getattr(e, "response", None)  # websockets >= 13: InvalidStatus
        if resp is not None and hasattr(resp, "status_code"):
            status = resp.status_code
            headers = getattr(resp, "headers", {}) or {}
            body = getattr(resp, "body", b"") or b""
        elif isinstance(getattr(e, "status_code", None), int):  # legacy InvalidStatusCode
            status = e.status_code  # type: ignore[attr-defined]
            headers = getattr(e, "headers", {}) or {}
        if status is not None:
            if status in (401, 403):
                if not body:  # legacy websockets keeps no body: say what 401 means here
                    return AuthError("unknown or revoked API key (the WebSocket upgrade was refused "
                                     f"with HTTP {status})", status=status,
                                     request_id=headers.get("X-Request-ID"))
                err = error_from_response(status, headers, body)
                return err if isinstance(err, AuthError) else AuthError(err.message, status=status)
            if status == 429:
                err = error_from_response(status, headers, body)
                return ConnectionLimitError(
                    err.message if body else "too many open streams for this key",
                    code="rate_limited", status=429, request_id=err.request_id,
                    retry_after=getattr(err, "retry_after", None))
            if status == 503:
                return error_from_response(status, headers, body)
            return TransportError(f"the WebSocket upgrade was refused with HTTP {status}", status=status)
        if isinstance(e, (asyncio.TimeoutError, socket.timeout)):
            return TransportError(f"the WebSocket did not open within {self.client.timeout} s")
        if isinstance(e, ConnectionRefusedError):
            return TransportError(f"cannot reach {self.client._http.url('')}: connection refused (is the server running?)")
        return TransportError(f"the WebSocket could not be opened: {e}")

    def start(self, engine: _Engine) -> None:
        super().start(engine)
        self.reader = asyncio.create_task(self._read(engine))

    def _may_resume(self) -> bool:
        return self.resume and not self.closing and bool(self.resume_info.get("session_id"))

    async def _read(self, engine: _Engine) -> None:
        while True:
            ws = self.ws
            exc: Optional[BaseException] = None
            try:
                async for raw in ws:
                    if isinstance(raw, bytes):
                        continue
                    self._dispatch(_parse_json(raw), engine)
            except asyncio.CancelledError:
                raise
            except self.wsexc.ConnectionClosed as e:
                exc = e
            except Exception as e:  # a message that is not JSON: not our protocol
                self._end(engine, TransportError(f"bad message on the WebSocket: {e}"))
                return
            if self.closing:
                return
            work_left = engine.unresolved or not engine.exhausted or self.updates
            if work_left and self._may_resume() and not _close_frame_received(exc):
                try:
                    await self._resume(engine)
                except asyncio.CancelledError:
                    raise
                except InfergateError as e:
                    self._end(engine, e)
                    return
                continue
            code, reason = _close_info(ws, exc)
            if code == 1000:
                self._end(engine, TransportError("the server closed the stream", status=1000))
            else:
                self._end(engine, error_from_close(code, reason))
            return

    def _end(self, engine: _Engine, err: InfergateError) -> None:
        """The stream is over: fail what still waits."""
        self._fail_updates(err)
        engine.closed(err)

    def _fail_updates(self, err: BaseException) -> None:
        while self.updates:
            fut = self.updates.popleft().future
            if fut is not None and not fut.done():
                fut.set_exception(err)

    def _dispatch(self, msg: Dict[str, Any], engine: _Engine) -> None:
        kind = msg.get("type")
        seq = msg.get("seq")
        if kind in ("result", "error", "skipped") and isinstance(seq, int) and not isinstance(seq, bool):
            if seq <= self.last_seq:
                self.duplicates += 1  # answered already (a replay overlapping what came)
                return
            self.last_seq = seq
            entry = self._entry_of(msg.get("id"), seq)
            if entry is None:
                # A frame of ours answered already, read and numbered twice by the
                # server: its item is out, so this answer is dropped.
                self.duplicates += 1
                return
            if entry.seq is not None and seq > entry.seq:
                self._renumber(entry, seq - entry.seq, engine)  # the server's numbering wins
            elif entry.seq != seq:
                engine.fail(TransportError(f"the server answered the frame of seq {entry.seq} with seq {seq}"))
                return
            del self.frames[seq]
            # Answers come in seq order, one per frame: a frame numbered before this
            # one and still unanswered will never be answered.
            missing = [s for s in self.frames if s < seq]
            for s in missing:
                del self.frames[s]
            engine.answer(msg)
            if missing:
                engine.fail(TransportError(
                    f"the server sent no answer for the frame of seq {missing[0]} (it answered seq {seq} after it)"))
            return
        if kind == "session.updated":
            self._set_session(msg.get("session"))
            if self.updates:
                fut = self.updates.popleft().future
                if fut is not None and not fut.done():
                    fut.set_result(dict(self.session or {}))
            return
        if kind == "error":  # no seq: the answer to a session.update it refused
            err = error_from_code(str(msg.get("code") or "invalid_request"),
                                  str(msg.get("message") or "session.update refused"))
            if self.updates:
                fut = self.updates.popleft().future
                if fut is not None and not fut.done():
                    fut.set_exception(err)
            return
        # pong, and message types of later versions: nothing waits for them.

    def _entry_of(self, id_: Any, seq: int) -> Optional[_Sent]:
        """The unanswered frame an answer is for: by its id when it has one of ours,
        else by seq."""
        if isinstance(id_, int) and not isinstance(id_, bool):
            for e in self.frames.values():
                if e.job is not None and e.job.index == id_:
                    return e
            return None
        return self.frames.get(seq)

    def _renumber(self, entry: _Sent, delta: int, engine: _Engine) -> None:
        """The server numbered entry delta more than the client did (it numbered a
        frame twice): shift it and every frame sent after it."""
        self.renumbered += 1
        moved = [e for e in self.frames.values() if e.order >= entry.order]
        for e in moved:
            del self.frames[e.seq]  # type: ignore[arg-type]
        for e in moved:
            e.seq += delta  # type: ignore[operator]
            self.frames[e.seq] = e
            if e.job is not None:
                engine.note_seq(e.job, e.seq)
        self.frames = dict(sorted(self.frames.items()))
        self.sent += delta

    async def _resume(self, engine: _Engine) -> None:
        """Resume the session on a new connection, after a drop. On return the reader
        goes on with self.ws; the frames and updates to send again are being sent
        by self.resender, which holds the lock until it is done."""
        assert self.lock is not None
        sid = str(self.resume_info["session_id"])
        window = float(self.resume_info.get("window_ms") or 30000) / 1000.0
        deadline = time.monotonic() + window
        await self.lock.acquire()  # no frame goes out while the stream has no connection
        handed_off = False
        try:
            delay, attempt = _RESUME_FIRST_DELAY, 0
            while True:
                attempt += 1
                try:
                    ws, ready = await self._connect((sid, self.last_seq))
                    break
                except (AuthError, ResumeError):
                    raise
                except InfergateError as e:  # unreachable, too many streams, overloaded: again
                    if attempt >= self.max_resume_attempts or time.monotonic() + delay > deadline:
                        raise ResumeError(f"could not resume session {sid} after {attempt} attempt(s): {e.message}",
                                          reason="unreachable") from e
                    await asyncio.sleep(delay)
                    delay = min(2 * delay, _RESUME_MAX_DELAY)
            if ready.get("resumed") is not True or ready.get("session_id") != sid:
                await _close_quietly(ws)  # a fresh session is of no use: its numbering starts again
                reason = ready.get("resume_error") or "not_resumed"
                raise ResumeError(f"the server could not resume session {sid}: {reason}", reason=str(reason))
            received = ready.get("received_seq")
            if not isinstance(received, int) or received < self.last_seq:
                await _close_quietly(ws)
                raise ResumeError(f"the resumed ready has a bad received_seq ({received!r}; "
                                  f"last answer received: seq {self.last_seq})", reason="protocol")
            self.ws = ws
            self._take_ready(ready)
            self.resumes += 1
            # Frames beyond received_seq were never read: they go again, with the
            # seqs the server gives them now, between the unanswered updates in
            # the order they were first sent.
            again = [e for e in self.frames.values() if e.seq is not None and e.seq > received]
            for e in again:
                del self.frames[e.seq]
            again.extend(self.updates)
            again.sort(key=lambda e: e.order)
            self.sent = received
            for e in again:
                if e.kind == "frame":
                    self.sent += 1
                    e.seq = self.sent
                    self.frames[e.seq] = e
                    self.resent += 1
                    if e.job is not None:
                        engine.note_seq(e.job, e.seq)
            self.resender = asyncio.create_task(self._send_again(ws, again))
            handed_off = True
        finally:
            if not handed_off:
                self.lock.release()

    async def _send_again(self, ws: Any, entries: List[_Sent]) -> None:
        assert self.lock is not None
        try:
            for e in entries:
                await ws.send(e.payload)
        except self.wsexc.ConnectionClosed:
            pass  # dropped again: the reader resumes again, and these go once more
        finally:
            self.lock.release()

    async def send(self, job: _Job, message: Any) -> Optional[int]:
        assert self.lock is not None and self.engine is not None
        async with self.lock:
            self.sent += 1
            self.order += 1
            entry = _Sent("frame", message, self.order, job=job, seq=self.sent)
            self.frames[entry.seq] = entry  # type: ignore[index]
            self.engine.note_seq(job, entry.seq)
            try:
                await self.ws.send(message)
            except self.wsexc.ConnectionClosed as e:
                if not self._may_resume() or _close_frame_received(e):
                    self.frames.pop(entry.seq, None)  # type: ignore[arg-type]
                    code, reason = _close_info(self.ws, e)
                    raise error_from_close(code, reason) from e
                # Dropped: the reader resumes the session and sends it again.
        return None  # the seq is noted already (and may change on a resume)

    async def update(self, settings: Dict[str, Any]) -> Dict[str, Any]:
        assert self.lock is not None
        if self.reader is not None and self.reader.done():
            raise TransportError("the stream has ended")
        fut: "asyncio.Future[Dict[str, Any]]" = asyncio.get_running_loop().create_future()
        async with self.lock:
            self.order += 1
            entry = _Sent("update", json.dumps({"type": "session.update", "session": settings}),
                          self.order, future=fut)
            self.updates.append(entry)
            try:
                await self.ws.send(entry.payload)
            except self.wsexc.ConnectionClosed as e:
                if not self._may_resume() or _close_frame_received(e):
                    self.updates.remove(entry)
                    code, reason = _close_info(self.ws, e)
                    raise error_from_close(code, reason) from e
        return await fut

    async def close(self) -> None:
        self.closing = True
        if self.resender is not None:
            self.resender.cancel()
            try:
                await self.resender
            except BaseException:
                pass
        if self.ws is not None:
            try:
                await asyncio.wait_for(self.ws.close(), 10)
            except Exception:
                pass
        if self.reader is not None:
            self.reader.cancel()
            try:
                await self.reader
            except BaseException:
                pass
        self._fail_updates(TransportError("the stream was closed"))


def _resume_reason(text: str) -> str:
    """The reason word of a refused resume's close reason ("resume failed: expired"),
    also from wordier reasons ("... unknown session or wrong resume token ...")."""
    for word in ("expired", "gap", "not_found"):
        if word in text:
            return word
    if "unknown session" in text or "not found" in text:
        return "not_found"
    return text.partition(":")[2].strip() or "unknown"


async def _close_quietly(ws: Any) -> None:
    try:
        await asyncio.wait_for(ws.close(), 5)
    except Exception:
        pass


def _parse_json(raw: Union[str, bytes]) -> Dict[str, Any]:
    try:
        msg = json.loads(raw)
    except ValueError as e:
        raise TransportError(f"the server sent a message that is not JSON: {str(raw)[:80]!r}") from e
    if not isinstance(msg, dict):
        raise TransportError("the server sent a JSON message that is not an object")
    return msg


class _SSEAdapter(_Adapter):
    """SSE fallback: results on ``GET /v1/sessions/{id}/events`` (read in a thread),
    frames by ``POST /v1/sessions/{id}/frames``, one at a time so their seq follow the
    input order."""

    name = "sse"

    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self.info: Optional[Dict[str, Any]] = None  # the 201 body of POST /v1/sessions
        self.closing = False
        self.thread: Optional[threading.Thread] = None
        self.sock: Optional[socket.socket] = None
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.got_ready: Optional[asyncio.Future] = None
        self.lock: Optional[asyncio.Lock] = None  # one frame or update POST at a time, in order

    async def open(self) -> None:
        self.lock = asyncio.Lock()
        headers = auth_headers(self.client.api_key)
        body = b""
        if self.settings:
            body = json.dumps({"session": self.settings}).encode()
            headers["Content-Type"] = "application/json"
        resp = await asyncio.to_thread(self.client._http.request, "POST", "/v1/sessions", body, headers)
        if resp.status in (404, 405):
            raise TransportError(f"the server has no SSE sessions (HTTP {resp.status})", status=resp.status)
        if resp.status == 429:
            err = error_from_response(resp.status, resp.headers, resp.body)
            raise ConnectionLimitError(err.message, code=err.code, status=429, request_id=err.request_id,
                                       retry_after=getattr(err, "retry_after", None))
        if resp.status != 201:
            resp.raise_for_error()
            raise TransportError(f"POST /v1/sessions answered HTTP {resp.status}", status=resp.status)
        self.info = resp.json()
        self.limits.update(self.info.get("limits") or {})
        self.session_id = self.info.get("session_id")
        self._set_session(self.info.get("session"))
        self.session_token = self.info["token"]
        self.events_path = self.info["events_url"].split("?", 1)[0]
        self.frames_path = self.info["frames_url"]
        self.delete_path = "/v1/sessions/" + self.info["session_id"]
        self.loop = asyncio.get_running_loop()
        self.got_ready = self.loop.create_future()
        self.thread = threading.Thread(target=self._read_events, name="infergate-sse", daemon=True)
        self.thread.start()
        try:
            data = await asyncio.wait_for(asyncio.shield(self.got_ready), self.client.timeout)
        except asyncio.TimeoutError as e:
            raise TransportError("the event stream sent no ready event") from e
        try:
            ready = json.loads(data)
        except ValueError:
            ready = None
        if isinstance(ready, dict):
            self._take_ready(ready)

    # Called in the reader thread: hand things to the loop.
    def _to_loop(self, fn: Any, *args: Any) -> None:
        try:
            assert self.loop is not None
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            pass  # the loop has closed: nobody is listening any more

    def _set_ready(self, value: Any) -> None:
        assert self.got_ready is not None
        if self.got_ready.done():
            return
        if isinstance(value, BaseException):
            self.got_ready.set_exception(value)
        else:
            self.got_ready.set_result(value)

    def _failed(self, exc: BaseException) -> None:
        if self.got_ready is not None and not self.got_ready.done():
            self._set_ready(exc)
        elif self.engine is not None and not self.closing:
            self.engine.closed(exc)

    def _deliver(self, msg: Dict[str, Any]) -> None:
        if self.engine is not None:
            self.engine.answer(msg)

    def _read_events(self) -> None:
        last_id: Optional[str] = None
        failures = 0
        read_timeout = max(float(self.client.timeout), 45.0)  # heartbeats come every 15 s
        while not self.closing:
            conn = self.client._http.new_connection(timeout=read_timeout)
            try:
                headers = {"Accept": "text/event-stream", "X-Session-Token": self.session_token,
                           "User-Agent": USER_AGENT, "Cache-Control": "no-cache"}
                if last_id is not None:
                    headers["Last-Event-ID"] = last_id
                conn.request("GET", self.client._http.path(self.events_path), headers=headers)
                self.sock = conn.sock  # kept: close() shuts it down to end a blocked read
                resp = conn.getresponse()
                if resp.status != 200:
                    self._to_loop(self._failed, error_from_response(resp.status, resp.headers, resp.read()))
                    return
                for event, eid, data in _sse_events(resp):
                    failures = 0
                    if event == "ready":
                        self._to_loop(self._set_ready, data)
                    elif event in ("result", "error", "skipped"):
                        if eid:
                            last_id = eid
                        try:
                            msg = json.loads(data)
                        except ValueError:
                            continue
                        if isinstance(msg, dict):
                            self._to_loop(self._deliver, msg)
                    elif event == "session.updated":
                        try:
                            msg = json.loads(data)
                        except ValueError:
                            continue
                        if isinstance(msg, dict):
                            self._to_loop(self._set_session, msg.get("session"))
                    elif event == "close":
                        if not self.closing:
                            try:
                                m = json.loads(data)
                            except ValueError:
                                m = {}
                            code = m.get("code") if isinstance(m, dict) else None
                            reason = m.get("reason", "") if isinstance(m, dict) else ""
                            err = (TransportError("the server ended the session", status=1000) if code == 1000
                                   else error_from_close(code if isinstance(code, int) else None, reason or ""))
                            self._to_loop(self._failed, err)
                        return
            except (OSError, http.client.HTTPException, ValueError):
                pass
            finally:
                conn.close()
            if self.closing:
                return
            failures += 1  # the stream broke: resume after the last event seen
            if failures > 3:
                self._to_loop(self._failed, TransportError("the SSE event stream was lost"))
                return
            time.sleep(0.25 * failures)

    async def prepare(self, job: _Job) -> Any:
        return (await _frame_json_async(job)).encode("ascii")

    async def _post(self, body: bytes) -> Response:
        headers = {"Content-Type": "application/json", "X-Session-Token": self.session_token}
        return await asyncio.to_thread(self.client._http.request, "POST", self.frames_path, body, headers)

    async def update(self, settings: Dict[str, Any]) -> Dict[str, Any]:
        """session.update over SSE: a POST to frames_url, answered 200 with the
        settings in force (the event stream gets a session.updated event too)."""
        assert self.lock is not None
        async with self.lock:  # after the frames POSTed before it
            resp = await self._post(json.dumps({"type": "session.update", "session": settings}).encode())
        if resp.status >= 400:
            raise error_from_response(resp.status, resp.headers, resp.body)
        body = resp.json()
        session = body.get("session") if isinstance(body, dict) else None
        if resp.status != 200 or not isinstance(session, dict):
            raise TransportError(f"session.update answered HTTP {resp.status} without settings", status=resp.status)
        self._set_session(session)
        return dict(session)

    async def send(self, job: _Job, body: Any) -> Optional[int]:
        assert self.lock is not None
        delay = _RESUME_FIRST_DELAY
        async with self.lock:  # held across the retries: frames keep their order
            for attempt in range(_SSE_FRAME_ATTEMPTS):
                last = attempt == _SSE_FRAME_ATTEMPTS - 1
                try:
                    resp = await self._post(body)
                except TransportError:
                    # The connection broke (a replica going away behind a proxy):
                    # the frame is sent again; an answer to both copies is
                    # matched by the frame's id, so a copy the server did read
                    # is answered once to the caller.
                    if last:
                        raise
                    await asyncio.sleep(delay)
                    delay = min(2 * delay, _RESUME_MAX_DELAY)
                    continue
                decoded = None
                try:
                    decoded = json.loads(resp.body) if resp.body else None
                except ValueError:
                    pass
                if isinstance(decoded, dict) and isinstance(decoded.get("seq"), int):
                    # Accepted (202), or refused with a seq (429, 400): either way
                    # its answer comes on the event stream.
                    return decoded["seq"]
                err = error_from_response(resp.status, resp.headers, resp.body) if resp.status >= 400 else \
                    TransportError(f"the frame POST answered HTTP {resp.status} without a seq", status=resp.status)
                if resp.status != 503 or last:
                    raise err
                # unavailable with no seq: the frame was not taken (a replica
                # shutting down or gone, a proxy with no replica): again, after the
                # wait the server asked for.
                wait = getattr(err, "retry_after", None)
                await asyncio.sleep(min(float(wait), _RESUME_MAX_DELAY) if wait else delay)
                delay = min(2 * delay, _RESUME_MAX_DELAY)
        raise TransportError("unreachable")  # the loop returns or raises

    async def close(self) -> None:
        self.closing = True
        if self.info is not None:
            try:
                await asyncio.to_thread(self.client._http.request, "DELETE", self.delete_path, None,
                                        {"X-Session-Token": self.session_token})
            except InfergateError:
                pass
        sock = self.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self.thread is not None:
            await asyncio.to_thread(self.thread.join, 10)


def _sse_events(resp: http.client.HTTPResponse) -> Iterator[Tuple[str, Optional[str], str]]:
    """Parse text/event-stream from a streaming response: (event, id, data) per event."""
    event, eid, data = "", None, []  # type: Tuple[str, Optional[str], List[str]]  # type: ignore[assignment]
    while True:
        line = resp.readline()
        if not line:
            return
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        if text == "":
            if data or event:
                yield (event or "message"), eid, "\n".join(data)
            event, data = "", []
            continue
        if text.startswith(":"):
            continue  # a comment: heartbeat
        field, _, value = text.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            eid = value


class _PostAdapter(_Adapter):
    """One ``POST /v1/classify`` per frame, up to max_in_flight (4) at once."""

    name = "post"

    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self.seq = 0
        self.tasks: set = set()

    async def open(self) -> None:
        auth_headers(self.client.api_key)  # fail early without a key

    async def prepare(self, job: _Job) -> Any:
        # The raw bytes go as they are, with the top_k setting in the query.
        return (self.settings or {}).get("top_k") or 5

    async def send(self, job: _Job, top_k: Any) -> Optional[int]:
        self.seq += 1
        task = asyncio.create_task(self._do(job, self.seq, top_k))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return self.seq

    async def _do(self, job: _Job, seq: int, top_k: int) -> None:
        engine = self.engine
        assert engine is not None and job.data is not None
        headers = {"Content-Type": sniff_content_type(job.data)}
        try:
            resp = await asyncio.to_thread(self.client._authed, "POST", "/v1/classify", body=job.data,
                                           headers=headers, query={"top_k": top_k})
        except InfergateError as e:
            engine.fail(e)
            return
        if resp.status == 200:
            msg = {"type": "result", "id": job.index, "seq": seq}
            body = resp.json()
            if isinstance(body, dict):
                msg.update({k: v for k, v in body.items() if k not in ("type", "id", "seq")})
            engine.answer(msg)
            return
        err = error_from_response(resp.status, resp.headers, resp.body)
        if isinstance(err, AuthError):
            engine.fail(err)
            return
        msg = {"type": "error", "id": job.index, "seq": seq, "code": err.code, "message": err.message}
        retry_after = getattr(err, "retry_after", None)
        if retry_after is not None:
            msg["retry_after_ms"] = int(retry_after * 1000)
        if err.request_id:
            msg["request_id"] = err.request_id
        engine.answer(msg)

    async def close(self) -> None:
        for t in list(self.tasks):
            t.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)


_ADAPTERS = {"ws": _WSAdapter, "sse": _SSEAdapter, "post": _PostAdapter}

__all__ = ["Client", "AsyncClient", "DEFAULT_URL", "TRANSPORTS"]
