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
from typing import Any, AsyncIterator, Dict, Iterable, Iterator, List, Optional, Tuple, Union

from ._http import HTTP, USER_AGENT, Response, auth_headers, json_or_error, load_image, sniff_content_type, source_of
from .errors import (
    AuthError,
    ConnectionLimitError,
    InfergateError,
    OverloadedError,
    TransportError,
    error_from_close,
    error_from_response,
)

DEFAULT_URL = "http://127.0.0.1:8080"
TRANSPORTS = ("auto", "ws", "sse", "post")

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
        (``mode``, ``top_k``, ``fps``; the server applies ``top_k`` for now). A mint
        counts against the key's requests_per_minute.
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
        top_k: int = 5,
        retry_rate_limited: bool = False,
        token: Optional[str] = None,
    ) -> Iterator[Dict[str, Any]]:
        """Classify many images over one stream; yields one dict per image, in input order.

        See AsyncClient.stream for the arguments and the items. This is a generator:
        the stream opens on the first ``next()`` and closes when the generator is
        exhausted or closed.
        """
        aclient = AsyncClient(self.url, self.api_key, self.timeout, _client=self)
        agen = aclient.stream(images, transport=transport, fps=fps, top_k=top_k,
                              retry_rate_limited=retry_rate_limited, token=token)
        runner = _LoopThread()
        try:
            while True:
                more, item = runner.call(_step(agen))
                if not more:
                    return
                yield item
        finally:
            try:
                runner.call(agen.aclose())
            except BaseException:
                pass
            runner.stop()


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

    async def stream(
        self,
        images: Any,
        transport: str = "auto",
        fps: Union[float, str, None] = None,
        top_k: int = 5,
        retry_rate_limited: bool = False,
        token: Optional[str] = None,
    ) -> AsyncIterator[Dict[str, Any]]:
        """Classify many images over one stream, pipelined; yield one dict per image.

        ``images``: an iterable (or async iterable) of paths, bytes or binary files;
        it is read lazily, so it may be endless (a camera).

        ``transport``: ``"ws"`` (WebSocket ``/v1/stream``), ``"sse"`` (``POST
        /v1/sessions``, results on the event stream, frames POSTed), ``"post"`` (one
        ``POST /v1/classify`` per image, up to 4 at once), or ``"auto"``: the first of
        ws, sse, post that opens. An authentication failure is raised at once, never
        skipped over.

        ``fps``: send at most this many frames per second (None: as fast as the
        server answers; ``"auto"``: the stream's own limit from ``ready.limits``).

        ``retry_rate_limited``: a frame answered ``rate_limited`` is sent again after
        the ``retry_after_ms`` the server gave, keeping its place in the output order.

        Up to the server's ``max_in_flight`` frames are outstanding at once. Each item
        has ``id`` (the input's index), ``seq`` (the server's sequence number; for POST,
        the client's send count), ``transport``, ``source`` (the path, or "<bytes>"),
        ``attempts``, ``rtt_ms`` (client-side, send to answer), and either the server's
        ``model``, ``predictions``, ``inference_ms``, ``latency_ms``, ``timing``
        (``queue_ms``, ``decode_ms``, ``preprocess_ms``, ``inference_ms``, ``log_ms``),
        ``batch`` and any other field of the server's result (POST has none of these
        times), or ``error``: ``{"code", "message", ...}`` for a frame the server (or the
        client, for a file it cannot read) refused. A failure of the whole stream
        (authentication, connection lost, too many streams) raises InfergateError after
        the items that were complete.

        ``token``: a client token (``mint_token``) to open the stream with, instead of
        the API key. It opens one stream, once, so it takes ``"ws"``, ``"sse"`` or
        ``"auto"`` (which then tries ws only: a refused WebSocket has spent it).
        """
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, not {transport!r}")
        if token is not None and transport == "post":
            raise ValueError("a client token opens a stream (ws or sse), not POST requests")
        if fps is not None and fps != "auto":
            fps = float(fps)
            if not fps > 0:
                raise ValueError("fps must be positive")
        adapter = await self._open(transport, token)
        engine = _Engine(adapter, fps=fps, top_k=top_k, retry=retry_rate_limited,
                         frame_timeout=max(60.0, 2.0 * float(self.timeout)))
        results = engine.run(images)
        try:
            adapter.start(engine)
            async for item in results:
                yield item
        finally:
            await results.aclose()
            await engine.stop()
            await adapter.close()

    async def _open(self, transport: str, token: Optional[str] = None) -> "_Adapter":
        order = ["ws", "sse", "post"] if transport == "auto" else [transport]
        client = self._sync
        if token is not None:
            if transport == "auto":
                order = ["ws"]
            # The adapters authenticate with client.api_key: a copy carries the token.
            client = copy.copy(self._sync)
            client.api_key = token
        failures: List[str] = []
        last: Optional[InfergateError] = None
        for name in order:
            adapter = _ADAPTERS[name](client)
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

    def __init__(self, adapter: "_Adapter", fps: Union[float, str, None], top_k: int, retry: bool,
                 frame_timeout: float = 60.0) -> None:
        self.adapter = adapter
        # A frame unanswered for this long means the transport lost it.
        self.frame_timeout = frame_timeout
        self.top_k = top_k
        self.retry = retry
        limits = adapter.limits
        self.max_in_flight = max(1, int(limits.get("max_in_flight") or 4))
        self.max_message_bytes = limits.get("max_message_bytes")
        self.interval = 0.0
        if fps == "auto":
            frames, window = limits.get("frames"), limits.get("window_ms") or 1000
            if frames:
                self.interval = _PACE_SLACK * (window / 1000.0) / float(frames)
        elif fps:
            self.interval = _PACE_SLACK / float(fps)
        # At most this many inputs read but not yet yielded (bounds memory when the
        # consumer is slower than the server).
        self.max_ahead = max(32, 4 * self.max_in_flight)

        self.created = 0  # inputs taken
        self.next_yield = 0
        self.exhausted = False
        self.done_sending = False
        self.unresolved = 0  # taken, not yet final
        self.outstanding = 0  # sent, not yet answered
        self.inflight: Dict[int, _Job] = {}
        self.by_seq: Dict[int, int] = {}
        self.retry_heap: List[Tuple[int, int, _Job]] = []
        self.results: Dict[int, Dict[str, Any]] = {}
        self.fatal: Optional[BaseException] = None
        self.next_send_at = 0.0
        self.not_before = 0.0
        self._wake_sender = asyncio.Event()
        self._wake_yield = asyncio.Event()
        self._sender: Optional[asyncio.Task] = None

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
        if seq is not None:
            job.seq = seq
            self.by_seq[seq] = job.index

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
        """A result or error message for a frame (WebSocket/SSE message format)."""
        idx = msg.get("id")
        if not (isinstance(idx, int) and not isinstance(idx, bool) and idx in self.inflight):
            idx = self.by_seq.get(msg.get("seq"))  # type: ignore[arg-type]
        job = self.inflight.pop(idx, None) if idx is not None else None
        if job is None:
            return  # not ours (or a duplicate): nothing waits for it
        if job.seq is not None:
            self.by_seq.pop(job.seq, None)
        self.outstanding -= 1
        now = time.monotonic()
        rtt = round((now - job.sent_at) * 1000.0, 2)
        seq = msg.get("seq", job.seq)
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
        if self.interval:
            self.next_send_at = time.monotonic() + self.interval

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
                message = await self.adapter.prepare(job, self.top_k)
                await self._pace()
                if self.fatal is not None:
                    return
                job.attempts += 1
                job.sent_at = time.monotonic()
                self.outstanding += 1
                self.inflight[job.index] = job
                seq = await self.adapter.send(job, message)
                if job.index in self.inflight:
                    self.note_seq(job, seq)
        except asyncio.CancelledError:
            raise
        except InfergateError as e:
            self.fail(e)
        except Exception as e:  # an input iterator's own error, or a bug: surface it
            self.fail(e)

    async def run(self, images: Any) -> AsyncIterator[Dict[str, Any]]:
        self._sender = asyncio.create_task(self._send_loop(images))
        while True:
            while self.next_yield in self.results:
                item = self.results.pop(self.next_yield)
                self.next_yield += 1
                self._wake_sender.set()
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


def _frame_json(job: _Job, top_k: int) -> str:
    assert job.data is not None
    return json.dumps({"type": "frame", "id": job.index,
                       "image": base64.b64encode(job.data).decode("ascii"), "top_k": top_k})


async def _frame_json_async(job: _Job, top_k: int) -> str:
    """_frame_json, off the event loop for large images (base64 of megabytes takes a while)."""
    assert job.data is not None
    if len(job.data) > 256 * 1024:
        return await asyncio.to_thread(_frame_json, job, top_k)
    return _frame_json(job, top_k)


# -- transports -------------------------------------------------------------------


class _Adapter:
    name = ""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.limits: Dict[str, Any] = dict(_DEFAULT_LIMITS)
        self.engine: Optional[_Engine] = None

    async def open(self) -> None:
        raise NotImplementedError

    def start(self, engine: _Engine) -> None:
        self.engine = engine

    async def prepare(self, job: _Job, top_k: int) -> Any:
        """Encode a frame for send (may take a while for a large image)."""
        return await _frame_json_async(job, top_k)

    async def send(self, job: _Job, message: Any) -> Optional[int]:
        """Send a prepared frame; return its seq when known."""
        raise NotImplementedError

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


class _WSAdapter(_Adapter):
    name = "ws"

    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self.ws: Any = None
        self.reader: Optional[asyncio.Task] = None
        self.closing = False
        self.sent = 0
        self.wsexc: Any = None

    async def open(self) -> None:
        headers = auth_headers(self.client.api_key)
        connect, header_arg, wsexc = _websockets_connect()
        self.wsexc = wsexc
        h = self.client._http
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
        url = h.ws_url("/v1/stream")
        try:
            self.ws = await connect(url, **kwargs)
        except AuthError:
            raise
        except Exception as e:
            raise self._handshake_error(e) from e
        try:
            raw = await asyncio.wait_for(self.ws.recv(), self.client.timeout)
        except asyncio.TimeoutError as e:
            raise TransportError("the WebSocket sent no ready message") from e
        except wsexc.ConnectionClosed as e:
            code, reason = _close_info(self.ws, e)
            raise error_from_close(code, reason) from e
        msg = _parse_json(raw)
        if msg.get("type") != "ready":
            raise TransportError(f"expected a ready message, got {str(raw)[:120]!r}")
        self.limits.update(msg.get("limits") or {})
        self.session_id = msg.get("session_id")

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

    async def _read(self, engine: _Engine) -> None:
        exc: Optional[BaseException] = None
        try:
            async for raw in self.ws:
                if isinstance(raw, bytes):
                    continue
                msg = _parse_json(raw)
                if msg.get("type") in ("result", "error"):
                    engine.answer(msg)
        except asyncio.CancelledError:
            raise
        except self.wsexc.ConnectionClosed as e:
            exc = e
        except Exception as e:  # a message that is not JSON: not our protocol
            engine.fail(TransportError(f"bad message on the WebSocket: {e}"))
            return
        if self.closing:
            return
        code, reason = _close_info(self.ws, exc)
        if code == 1000:
            engine.closed(TransportError("the server closed the stream", status=1000))
        else:
            engine.closed(error_from_close(code, reason))

    async def send(self, job: _Job, message: Any) -> Optional[int]:
        try:
            await self.ws.send(message)
        except self.wsexc.ConnectionClosed as e:
            code, reason = _close_info(self.ws, e)
            raise error_from_close(code, reason) from e
        self.sent += 1
        return self.sent  # the server numbers frames in the order they arrive

    async def close(self) -> None:
        self.closing = True
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
        self.session: Optional[Dict[str, Any]] = None
        self.closing = False
        self.thread: Optional[threading.Thread] = None
        self.sock: Optional[socket.socket] = None
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.ready: Optional[asyncio.Future] = None

    async def open(self) -> None:
        headers = auth_headers(self.client.api_key)
        resp = await asyncio.to_thread(self.client._http.request, "POST", "/v1/sessions", b"", headers)
        if resp.status in (404, 405):
            raise TransportError(f"the server has no SSE sessions (HTTP {resp.status})", status=resp.status)
        if resp.status == 429:
            err = error_from_response(resp.status, resp.headers, resp.body)
            raise ConnectionLimitError(err.message, code=err.code, status=429, request_id=err.request_id,
                                       retry_after=getattr(err, "retry_after", None))
        if resp.status != 201:
            resp.raise_for_error()
            raise TransportError(f"POST /v1/sessions answered HTTP {resp.status}", status=resp.status)
        self.session = resp.json()
        self.limits.update(self.session.get("limits") or {})
        self.token = self.session["token"]
        self.events_path = self.session["events_url"].split("?", 1)[0]
        self.frames_path = self.session["frames_url"]
        self.delete_path = "/v1/sessions/" + self.session["session_id"]
        self.loop = asyncio.get_running_loop()
        self.ready = self.loop.create_future()
        self.thread = threading.Thread(target=self._read_events, name="infergate-sse", daemon=True)
        self.thread.start()
        try:
            await asyncio.wait_for(asyncio.shield(self.ready), self.client.timeout)
        except asyncio.TimeoutError as e:
            raise TransportError("the event stream sent no ready event") from e

    # Called in the reader thread: hand things to the loop.
    def _to_loop(self, fn: Any, *args: Any) -> None:
        try:
            assert self.loop is not None
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            pass  # the loop has closed: nobody is listening any more

    def _set_ready(self, value: Any) -> None:
        assert self.ready is not None
        if self.ready.done():
            return
        if isinstance(value, BaseException):
            self.ready.set_exception(value)
        else:
            self.ready.set_result(value)

    def _failed(self, exc: BaseException) -> None:
        if self.ready is not None and not self.ready.done():
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
                headers = {"Accept": "text/event-stream", "X-Session-Token": self.token,
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
                    elif event in ("result", "error"):
                        if eid:
                            last_id = eid
                        try:
                            msg = json.loads(data)
                        except ValueError:
                            continue
                        if isinstance(msg, dict):
                            self._to_loop(self._deliver, msg)
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

    async def prepare(self, job: _Job, top_k: int) -> Any:
        return (await _frame_json_async(job, top_k)).encode("ascii")

    async def send(self, job: _Job, body: Any) -> Optional[int]:
        headers = {"Content-Type": "application/json", "X-Session-Token": self.token}
        resp = await asyncio.to_thread(self.client._http.request, "POST", self.frames_path, body, headers)
        decoded = None
        try:
            decoded = json.loads(resp.body) if resp.body else None
        except ValueError:
            pass
        if isinstance(decoded, dict) and isinstance(decoded.get("seq"), int):
            # Accepted (202), or refused with a seq (429, 400): either way its answer
            # comes on the event stream.
            return decoded["seq"]
        raise error_from_response(resp.status, resp.headers, resp.body) if resp.status >= 400 else \
            TransportError(f"the frame POST answered HTTP {resp.status} without a seq", status=resp.status)

    async def close(self) -> None:
        self.closing = True
        if self.session is not None:
            try:
                await asyncio.to_thread(self.client._http.request, "DELETE", self.delete_path, None,
                                        {"X-Session-Token": self.token})
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

    async def prepare(self, job: _Job, top_k: int) -> Any:
        return top_k  # the raw bytes go as they are

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
