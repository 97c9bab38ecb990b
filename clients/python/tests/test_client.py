"""Tests of the Python client against a live infergate server.

The module builds the server from this checkout (``go build ./cmd/infergate``), starts
it on a free port with a temporary database, creates the keys it needs with
``infergate keys create``, and stops it at the end. Nothing is skipped: without Go, the
model assets (``make setup``) or the websockets package, the tests fail and say why.

Run: ``bash clients/python/run_tests.sh`` (or ``/usr/bin/python3 -m unittest discover -s
clients/python/tests -v`` from the repository root).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import http.client
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path
from typing import Any, Dict, List, Optional
from unittest import mock
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
PKG_DIR = HERE.parent  # clients/python
REPO = PKG_DIR.parent.parent  # the repository root
sys.path.insert(0, str(PKG_DIR))

import infergate_client  # noqa: E402
from infergate_client import (  # noqa: E402
    AsyncClient,
    AuthError,
    Client,
    ConnectionLimitError,
    ImageTooLargeError,
    InfergateError,
    InvalidImageError,
    InvalidRequestError,
    RateLimitError,
    ResumeError,
    Skipped,
    TransportError,
)

IMAGES = REPO / "assets" / "images"
PHOTOS = [IMAGES / f"{n}.jpg" for n in ("dog", "horses", "kite", "person", "scream")]
REQUIRED_ASSETS = [
    REPO / "assets" / "models" / "mobilenetv2-12-int8.onnx",
    REPO / "assets" / "labels" / "imagenet_classes.txt",
    REPO / "third_party" / "onnxruntime" / "lib" / "libonnxruntime.so.1.24.1",
    *PHOTOS,
]
DOG_TOP1 = {248, 249, 250}  # Eskimo dog, malamute, Siberian husky
KITE_INDEX = 978  # seashore: in kite.jpg's top 2
CLI_PYTHON = os.environ.get("INFERGATE_TEST_PYTHON", sys.executable)
KEY_RE = re.compile(r"ig_[A-Za-z0-9_-]{32,}")
BAD_KEY = "ig_" + "0" * 43


class _Server:
    """The infergate server this module runs."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="infergate-pytest-"))
        self.binary = self.tmp / "infergate"
        self.db = self.tmp / "ig.db"
        self.proc: Optional[subprocess.Popen] = None
        self.url = ""
        self.lines: "queue.Queue[str]" = queue.Queue()
        self.stderr_path = self.tmp / "server.stderr"
        self.keys: Dict[str, str] = {}

    def build(self) -> None:
        go = shutil.which("go")
        if go is None:
            raise RuntimeError("Go is not installed (the tests build the server with `go build`)")
        env = dict(os.environ, CGO_ENABLED="1")
        r = subprocess.run([go, "build", "-o", str(self.binary), "./cmd/infergate"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            raise RuntimeError(f"go build ./cmd/infergate failed:\n{r.stderr[-3000:]}")

    def start(self) -> None:
        self.stderr_file = open(self.stderr_path, "w")
        self.proc = subprocess.Popen(
            [str(self.binary), "serve", "--db", str(self.db), "--addr", "127.0.0.1:0"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=self.stderr_file, text=True,
        )
        self.drainer = threading.Thread(target=self._drain, daemon=True)
        self.drainer.start()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            m = re.search(r"listening on (http://[0-9.]+:\d+)", line)
            if m:
                self.url = m.group(1)
                return
        raise RuntimeError("the server did not start (no 'listening on' line); its stderr ends with:\n"
                           + self.stderr_tail())

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def stderr_tail(self) -> str:
        try:
            return self.stderr_path.read_text()[-3000:]
        except OSError:
            return ""

    def demo_key(self) -> str:
        path = self.tmp / "demo-api-key.txt"
        m = KEY_RE.search(path.read_text())
        if not m:
            raise RuntimeError(f"no API key in {path}")
        return m.group(0)

    def create_key(self, email: str, *flags: str) -> str:
        r = subprocess.run([str(self.binary), "keys", "create", "--email", email, *flags, "--db", str(self.db)],
                           cwd=REPO, capture_output=True, text=True, timeout=60)
        m = KEY_RE.search(r.stdout)
        if r.returncode != 0 or not m:
            raise RuntimeError(f"keys create --email {email} failed ({r.returncode}): {r.stderr.strip()}")
        return m.group(0)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc is not None and self.proc.stdout is not None:
            self.drainer.join(timeout=5)  # it ends at EOF, once the server has exited
            self.proc.stdout.close()
        if getattr(self, "stderr_file", None):
            self.stderr_file.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


SERVER: Optional[_Server] = None
SETUP_ERROR: Optional[str] = None


def setUpModule() -> None:
    global SERVER, SETUP_ERROR
    missing = [str(p.relative_to(REPO)) for p in REQUIRED_ASSETS if not p.is_file()]
    if missing:
        SETUP_ERROR = ("model assets are missing: " + ", ".join(missing)
                       + " (run `make setup` or scripts/setup.sh from the repository root)")
        return
    server = _Server()
    try:
        server.build()
        server.start()
        server.keys["demo"] = server.demo_key()
        server.keys["main"] = server.create_key("py-main@test.local", "--rpm", "100000", "--fps", "1000",
                                                "--max-connections", "50")
        server.keys["fps2"] = server.create_key("py-fps2@test.local", "--fps", "2", "--rpm", "100000",
                                                "--max-connections", "50")
        server.keys["rpm3"] = server.create_key("py-rpm3@test.local", "--rpm", "3")
        server.keys["rpm3post"] = server.create_key("py-rpm3post@test.local", "--rpm", "3")
        server.keys["conn1"] = server.create_key("py-conn1@test.local", "--max-connections", "1",
                                                 "--rpm", "100000", "--fps", "1000")
        server.keys["usage"] = server.create_key("py-usage@test.local", "--rpm", "100000", "--fps", "1000")
        server.keys["cli"] = server.create_key("py-cli@test.local", "--rpm", "100000", "--fps", "1000",
                                               "--max-connections", "50")
        server.keys["resume"] = server.create_key("py-resume@test.local", "--rpm", "100000", "--fps", "1000",
                                                  "--max-connections", "50")
        # A user of its own for the test that counts log rows: a stream of another
        # test's that waits for its resume still infers and logs what it read.
        server.keys["readonce"] = server.create_key("py-readonce@test.local", "--rpm", "100000", "--fps", "1000",
                                                    "--max-connections", "50")
    except Exception as e:  # reported by every test, as a failure
        SETUP_ERROR = f"could not start the infergate server: {e}"
        server.stop()
        return
    SERVER = server


def tearDownModule() -> None:
    if SERVER is not None:
        SERVER.stop()


class LiveTest(unittest.TestCase):
    """A test against the server of this module; fails (not skips) when it is not up."""

    def setUp(self) -> None:
        if SETUP_ERROR:
            self.fail(SETUP_ERROR)
        assert SERVER is not None
        self.server = SERVER
        self.url = SERVER.url

    def client(self, key: str = "main", **kw: Any) -> Client:
        c = Client(self.url, api_key=self.server.keys[key] if key in self.server.keys else key, **kw)
        self.addCleanup(c.close)
        return c

    def assertPhotos(self, items: List[Dict[str, Any]], transport: str) -> None:
        """Five results for PHOTOS, in order, with the known answers for dog and kite."""
        self.assertEqual(len(items), len(PHOTOS), items)
        self.assertEqual([i["id"] for i in items], list(range(len(PHOTOS))))
        self.assertEqual([i["source"] for i in items], [str(p) for p in PHOTOS])
        for i in items:
            self.assertNotIn("error", i, i)
            self.assertEqual(i["transport"], transport)
            self.assertIsInstance(i["seq"], int)
            self.assertTrue(i["predictions"], i)
        self.assertIn(items[0]["predictions"][0]["index"], DOG_TOP1, items[0])
        self.assertIn(KITE_INDEX, [p["index"] for p in items[2]["predictions"][:2]], items[2])
        seqs = [i["seq"] for i in items]
        self.assertEqual(seqs, sorted(seqs))
        self.assertEqual(len(set(seqs)), len(seqs))


class TestPrerequisites(unittest.TestCase):
    def test_websockets_installed(self) -> None:
        try:
            import websockets  # noqa: F401
        except ImportError:
            self.fail(f"the 'websockets' package is not importable by {sys.executable}: "
                      "install Debian's python3-websockets (clients/python/run_tests.sh does) "
                      "and run the tests with /usr/bin/python3")

    def test_model_assets_present(self) -> None:
        missing = [str(p.relative_to(REPO)) for p in REQUIRED_ASSETS if not p.is_file()]
        self.assertEqual(missing, [], "model assets are missing: run `make setup` (scripts/setup.sh)")

    def test_server_started(self) -> None:
        if SETUP_ERROR:
            self.fail(SETUP_ERROR)


class TestClassify(LiveTest):
    def test_dog(self) -> None:
        body = self.client("demo").classify(PHOTOS[0])
        self.assertIn("model", body)
        self.assertEqual(len(body["predictions"]), 5)
        self.assertIn(body["predictions"][0]["index"], DOG_TOP1, body)
        confs = [p["confidence"] for p in body["predictions"]]
        self.assertEqual(confs, sorted(confs, reverse=True))

    def test_kite_bytes_and_top_k(self) -> None:
        body = self.client().classify(PHOTOS[2].read_bytes(), top_k=2)
        self.assertEqual(len(body["predictions"]), 2)
        self.assertIn(KITE_INDEX, [p["index"] for p in body["predictions"]])

    def test_file_object(self) -> None:
        with open(PHOTOS[0], "rb") as f:
            body = self.client().classify(f, top_k=1)
        self.assertIn(body["predictions"][0]["index"], DOG_TOP1)

    def test_invalid_image(self) -> None:
        with self.assertRaises(InvalidImageError) as cm:
            self.client().classify(b"not an image")
        e = cm.exception
        self.assertEqual(e.code, "invalid_image")
        self.assertEqual(e.status, 400)
        self.assertTrue(e.message)
        self.assertTrue(e.request_id)
        self.assertIsInstance(e, InfergateError)

    def test_rate_limited(self) -> None:
        c = self.client("rpm3")
        for _ in range(3):
            c.classify(PHOTOS[0], top_k=1)
        with self.assertRaises(RateLimitError) as cm:
            c.classify(PHOTOS[0], top_k=1)
        self.assertEqual(cm.exception.status, 429)
        self.assertEqual(cm.exception.code, "rate_limited")
        self.assertIsInstance(cm.exception.retry_after, float)
        self.assertGreater(cm.exception.retry_after, 0)
        self.assertEqual(c.rate_limit["limit"], 3)

    def test_model_info(self) -> None:
        with Client(self.url, api_key=None) as c:
            info = c.model_info()  # no key needed
        self.assertEqual(info["status"], "loaded")
        self.assertEqual(info["num_labels"], 1000)

    def test_connection_refused(self) -> None:
        with self.assertRaises(TransportError):
            Client("http://127.0.0.1:1", api_key=BAD_KEY, timeout=5).classify(b"x")


class TestLargeBody(LiveTest):
    """A body over the limit is answered 413 even by clients that write the whole body
    before they read anything, as http.client does: the server reads and discards the
    rest of the body before closing (a lingering close), so no connection reset eats
    the answer."""

    def post(self, body: Any, content_type: str = "application/json", **kw: Any) -> http.client.HTTPResponse:
        u = urlsplit(self.url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
        self.addCleanup(conn.close)
        conn.request("POST", "/v1/classify", body=body, headers={
            "Authorization": f"Bearer {self.server.keys['main']}", "Content-Type": content_type}, **kw)
        return conn.getresponse()

    def assertTooLarge(self, resp: http.client.HTTPResponse) -> None:
        self.assertEqual(resp.status, 413)
        err = json.loads(resp.read())
        self.assertEqual(err["error"]["code"], "image_too_large")
        self.assertTrue(err["request_id"])

    def test_content_length_12_mib(self) -> None:
        body = b'{"image":"' + b"A" * (12 << 20) + b'"}'
        self.assertTooLarge(self.post(body))

    def test_chunked(self) -> None:
        def chunks() -> Any:
            yield b'{"image":"'
            for _ in range(32):
                yield b"A" * (1 << 20)
            yield b'"}'
        self.assertTooLarge(self.post(chunks(), encode_chunked=True))

    def test_client_raises_image_too_large(self) -> None:
        jpeg = b"\xff\xd8\xff" + b"\0" * (12 << 20)
        with self.assertRaises(ImageTooLargeError) as cm:
            self.client().classify(jpeg)
        self.assertEqual(cm.exception.status, 413)


class TestStreamTransports(LiveTest):
    def test_ws(self) -> None:
        self.assertPhotos(list(self.client().stream(PHOTOS, transport="ws")), "ws")

    def test_sse(self) -> None:
        self.assertPhotos(list(self.client().stream(PHOTOS, transport="sse")), "sse")

    def test_post(self) -> None:
        self.assertPhotos(list(self.client().stream(PHOTOS, transport="post")), "post")

    def test_sse_frame_post_retried(self) -> None:
        # Behind a load balancer, the POST of a frame in flight when its replica
        # dies fails: 503 from the proxy, or a broken connection. The replica that
        # takes the session over answers the frame sent again. (A fake here: the
        # proxy's failure; the takeover itself is TestReplicas' in Go.)
        import infergate_client.client as mod
        from infergate_client._http import Response

        real = mod._SSEAdapter._post
        failures = [Response(503, {"Retry-After": "0"}, b'{"error":{"code":"unavailable","message":"no replica answered"}}'),
                    TransportError("connection to the proxy lost")]

        async def flaky(adapter: Any, body: bytes) -> Any:
            if failures and b'"id": 1,' in body:
                f = failures.pop(0)
                if isinstance(f, Exception):
                    raise f
                return f
            return await real(adapter, body)

        with mock.patch.object(mod._SSEAdapter, "_post", flaky):
            items = list(self.client().stream(PHOTOS, transport="sse"))
        self.assertEqual(failures, [], "the failures were not met")
        self.assertPhotos(items, "sse")

    def test_auto_picks_websocket(self) -> None:
        self.assertPhotos(list(self.client().stream(PHOTOS)), "ws")

    def test_auto_falls_back_without_websockets(self) -> None:
        import infergate_client.client as mod

        def no_websockets() -> Any:
            raise TransportError("websockets is not installed", code="websockets_missing")

        with mock.patch.object(mod, "_websockets_connect", no_websockets):
            self.assertPhotos(list(self.client().stream(PHOTOS, transport="auto")), "sse")

    def test_stream_items(self) -> None:
        items = list(self.client().stream([PHOTOS[0], PHOTOS[0].read_bytes()], transport="ws", top_k=2))
        self.assertEqual([i["source"] for i in items], [str(PHOTOS[0]), "<bytes>"])
        for i in items:
            self.assertEqual(len(i["predictions"]), 2)
            self.assertIn("latency_ms", i)
            self.assertIn("inference_ms", i)

    def test_stream_items_timing(self) -> None:
        for transport in ("ws", "sse"):
            with self.subTest(transport=transport):
                items = list(self.client().stream([PHOTOS[0]], transport=transport))
                self.assertEqual(len(items), 1)
                i = items[0]
                self.assertEqual(set(i["timing"]), {"queue_ms", "decode_ms", "preprocess_ms", "inference_ms", "log_ms"})
                self.assertTrue(all(v >= 0 for v in i["timing"].values()), i["timing"])
                self.assertGreater(i["timing"]["inference_ms"], 0)
                self.assertGreaterEqual(i["batch"], 1)

    def test_async_client(self) -> None:
        async def run() -> List[Dict[str, Any]]:
            ac = AsyncClient(self.url, api_key=self.server.keys["main"])

            async def photos() -> Any:
                for p in PHOTOS:
                    yield p

            return [item async for item in ac.stream(photos(), transport="ws")]

        self.assertPhotos(asyncio.run(run()), "ws")

    def test_generator_input_and_early_close(self) -> None:
        c = self.client()
        gen = c.stream((p for p in PHOTOS * 4), transport="ws")
        first = next(gen)
        self.assertIn(first["predictions"][0]["index"], DOG_TOP1)
        gen.close()  # must not hang or leak the connection
        self.assertPhotos(list(c.stream(PHOTOS, transport="ws")), "ws")

    def test_sse_resumes_after_event_stream_drop(self) -> None:
        import socket

        import infergate_client.client as mod

        adapters: List[Any] = []
        start = mod._SSEAdapter.start

        def capture(adapter: Any, engine: Any) -> None:
            adapters.append(adapter)
            start(adapter, engine)

        with mock.patch.object(mod._SSEAdapter, "start", capture):
            items = []
            for item in self.client().stream(PHOTOS * 2, transport="sse", fps=5):
                items.append(item)
                if len(items) == 2:  # cut the event stream: the client reconnects with Last-Event-ID
                    adapters[0].sock.shutdown(socket.SHUT_RDWR)
        self.assertEqual([i["id"] for i in items], list(range(10)))
        self.assertEqual([i.get("error") for i in items], [None] * 10)

    def test_unreadable_file(self) -> None:
        items = list(self.client().stream([str(IMAGES / "no-such-photo.jpg"), PHOTOS[0]], transport="ws"))
        self.assertEqual(items[0]["error"]["code"], "unreadable")
        self.assertIn(items[1]["predictions"][0]["index"], DOG_TOP1)


class TestPipelining(LiveTest):
    def _ordered(self, transport: str) -> None:
        c = self.client()
        expected = {str(p): c.classify(p, top_k=1)["predictions"][0]["index"] for p in PHOTOS}
        frames = [PHOTOS[i % len(PHOTOS)] for i in range(10)]
        t0 = time.monotonic()
        items = list(c.stream(frames, transport=transport, top_k=1))
        wall = time.monotonic() - t0
        self.assertEqual([i["id"] for i in items], list(range(10)))
        self.assertEqual([i["source"] for i in items], [str(p) for p in frames])
        for i in items:
            self.assertNotIn("error", i, i)
            self.assertEqual(i["predictions"][0]["index"], expected[i["source"]], i)
        seqs = [i["seq"] for i in items]
        self.assertTrue(all(a < b for a, b in zip(seqs, seqs[1:])), seqs)
        # With several frames outstanding, each waits for the ones before it: the
        # round trips overlap, so they add up to more than the whole run took.
        self.assertGreater(sum(i["rtt_ms"] for i in items) / 1000.0, 1.2 * wall,
                           "the frames were not pipelined")

    def test_ws(self) -> None:
        self._ordered("ws")

    def test_sse(self) -> None:
        self._ordered("sse")

    def test_post(self) -> None:
        self._ordered("post")


class TestClientToken(LiveTest):
    def test_mint_and_stream_once(self) -> None:
        for transport in ("ws", "sse", "auto"):
            with self.subTest(transport=transport):
                client = self.client()
                tok = client.mint_token(ttl_seconds=30, session={"mode": "ordered"})
                self.assertTrue(tok["token"].startswith("ct_"), tok)
                self.assertIn("expires_at", tok)
                items = list(client.stream(PHOTOS[:2], transport=transport, token=tok["token"]))
                self.assertEqual(len(items), 2, items)
                for i in items:
                    self.assertNotIn("error", i, i)
                with self.assertRaises(AuthError) as cm:
                    list(client.stream(PHOTOS[:1], transport=transport, token=tok["token"]))
                self.assertEqual(cm.exception.code, "unauthorized")

    def test_token_without_key(self) -> None:
        tok = self.client().mint_token()["token"]
        client = self.client(BAD_KEY)  # the token alone opens the stream
        items = list(client.stream(PHOTOS[:1], transport="ws", token=tok))
        self.assertNotIn("error", items[0], items[0])

    def test_token_refused_for_requests(self) -> None:
        tok = self.client().mint_token()["token"]
        with self.assertRaises(AuthError):
            self.client(tok).classify(PHOTOS[0])
        with self.assertRaises(ValueError):
            list(self.client().stream(PHOTOS[:1], transport="post", token=tok))

    def test_invalid_settings(self) -> None:
        with self.assertRaises(InvalidRequestError):
            self.client().mint_token(ttl_seconds=601)
        with self.assertRaises(InvalidRequestError):
            self.client().mint_token(session={"mode": "fast"})


class TestAuth(LiveTest):
    def test_classify(self) -> None:
        with self.assertRaises(AuthError) as cm:
            self.client(BAD_KEY).classify(PHOTOS[0])
        self.assertEqual(cm.exception.status, 401)
        self.assertEqual(cm.exception.code, "unauthorized")

    def test_usage(self) -> None:
        with self.assertRaises(AuthError):
            self.client(BAD_KEY).usage()

    def test_each_transport(self) -> None:
        for transport in ("ws", "sse", "post", "auto"):
            with self.subTest(transport=transport):
                with self.assertRaises(AuthError):
                    list(self.client(BAD_KEY).stream(PHOTOS[:2], transport=transport))

    def test_missing_key(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "INFERGATE_API_KEY"}
        with mock.patch.dict(os.environ, env, clear=True):
            c = Client(self.url)
            with self.assertRaises(AuthError):
                c.classify(PHOTOS[0])
            with self.assertRaises(AuthError):
                list(c.stream(PHOTOS[:1], transport="ws"))

    def test_key_from_environment(self) -> None:
        with mock.patch.dict(os.environ, {"INFERGATE_API_KEY": self.server.keys["main"]}):
            with Client(self.url) as c:
                body = c.classify(PHOTOS[0], top_k=1)
        self.assertIn(body["predictions"][0]["index"], DOG_TOP1)


class TestRevocation(LiveTest):
    """Revoking a key ends its streams (close code 4401): the stream raises AuthError."""

    def test_revoked_mid_stream(self) -> None:
        for transport in ("ws", "sse", "post"):
            with self.subTest(transport=transport):
                key = self.server.create_key(f"py-revoke-{transport}@test.local")
                c = self.client(key)
                gen = c.stream([PHOTOS[0]] * 60, transport=transport, fps=5, top_k=1)
                self.assertIn("predictions", next(gen))
                r = subprocess.run([str(self.server.binary), "keys", "revoke", "--db", str(self.server.db), key[:8]],
                                   capture_output=True, text=True, timeout=60)
                self.assertEqual(r.returncode, 0, r.stderr)
                t0 = time.monotonic()
                with self.assertRaises(AuthError):
                    for _ in gen:
                        pass
                self.assertLess(time.monotonic() - t0, 10)


class TestRateLimit(LiveTest):
    """The fps2 key's streams admit 2 frames per second (each stream has its own window)."""

    def test_without_retry(self) -> None:
        for transport in ("ws", "sse"):
            with self.subTest(transport=transport):
                items = list(self.client("fps2").stream([PHOTOS[0]] * 6, transport=transport, top_k=1))
                self.assertEqual([i["id"] for i in items], list(range(6)))
                limited = [i for i in items if "error" in i]
                self.assertTrue(limited, "no frame was rate limited")
                for i in limited:
                    self.assertEqual(i["error"]["code"], "rate_limited", i)
                    self.assertGreater(i["error"]["retry_after_ms"], 0)
                self.assertIn(items[0]["predictions"][0]["index"], DOG_TOP1)

    def test_with_retry(self) -> None:
        for transport in ("ws", "sse"):
            with self.subTest(transport=transport):
                frames = [PHOTOS[i % 2 * 2] for i in range(6)]  # dog, kite, dog, ...
                items = list(self.client("fps2").stream(frames, transport=transport, top_k=2,
                                                        retry_rate_limited=True))
                self.assertEqual([i["id"] for i in items], list(range(6)))
                for n, i in enumerate(items):
                    self.assertNotIn("error", i, i)
                    indexes = [p["index"] for p in i["predictions"]]
                    if n % 2 == 0:
                        self.assertIn(indexes[0], DOG_TOP1)
                    else:
                        self.assertIn(KITE_INDEX, indexes)
                self.assertTrue(any(i["attempts"] > 1 for i in items), "nothing was retried")

    def test_fps_pacing(self) -> None:
        t0 = time.monotonic()
        items = list(self.client("fps2").stream([PHOTOS[0]] * 5, transport="ws", fps=1.9, top_k=1))
        self.assertEqual([i.get("error") for i in items], [None] * 5)
        self.assertGreater(time.monotonic() - t0, 2.0)  # 5 frames at 1.9 per second

    def test_post_transport_rate_limited(self) -> None:
        items = list(self.client("rpm3post").stream([PHOTOS[0]] * 5, transport="post", top_k=1))
        codes = [i["error"]["code"] for i in items if "error" in i]
        self.assertTrue(codes, "no request was rate limited")
        self.assertEqual(set(codes), {"rate_limited"})


class TestConnectionLimit(LiveTest):
    """The conn1 key's user may hold one stream at a time."""

    def test_second_stream_refused(self) -> None:
        c = self.client("conn1")
        for first in ("ws", "sse"):
            with self.subTest(first=first):
                held = c.stream(PHOTOS * 2, transport=first, top_k=1)
                next(held)  # the stream is open now
                try:
                    for second in ("ws", "sse"):
                        with self.assertRaises(ConnectionLimitError) as cm:
                            list(c.stream(PHOTOS[:1], transport=second))
                        self.assertIsInstance(cm.exception, RateLimitError)
                    # auto gets past the cap by falling back to POST
                    items = list(c.stream(PHOTOS[:1], transport="auto"))
                    self.assertEqual(items[0]["transport"], "post")
                finally:
                    rest = list(held)
                self.assertEqual(len(rest), len(PHOTOS) * 2 - 1)
                self._wait_released(c)

    def _wait_released(self, c: Client) -> None:
        # A closed stream answers its frames in flight before it stops counting.
        deadline = time.monotonic() + 5
        while True:
            try:
                list(c.stream(PHOTOS[:1], transport="ws"))
                return
            except ConnectionLimitError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


class TestInvalidImage(LiveTest):
    def test_stream_error_item(self) -> None:
        for transport in ("ws", "sse", "post"):
            with self.subTest(transport=transport):
                items = list(self.client().stream([b"not an image", PHOTOS[0]], transport=transport))
                self.assertEqual(len(items), 2)
                self.assertEqual(items[0]["error"]["code"], "invalid_image", items[0])
                self.assertEqual(items[0]["source"], "<bytes>")
                self.assertEqual(items[0]["id"], 0)
                self.assertNotIn("predictions", items[0])
                self.assertIn(items[1]["predictions"][0]["index"], DOG_TOP1)


class TestUsage(LiveTest):
    def test_numbers_increase(self) -> None:
        c = self.client("usage")
        before = c.usage()
        for field in ("total_requests", "successful_requests", "success_rate", "avg_response_time_ms",
                      "by_transport"):
            self.assertIn(field, before)
        c.classify(PHOTOS[0])
        list(c.stream(PHOTOS[:2], transport="ws"))
        list(c.stream(PHOTOS[:1], transport="sse"))
        after = c.usage()
        self.assertEqual(after["total_requests"], before["total_requests"] + 4)
        self.assertEqual(after["successful_requests"], before["successful_requests"] + 4)
        self.assertEqual(after["by_transport"]["post"], before["by_transport"]["post"] + 1)
        self.assertEqual(after["by_transport"]["ws"], before["by_transport"]["ws"] + 2)
        self.assertEqual(after["by_transport"]["sse"], before["by_transport"]["sse"] + 1)

    def test_since(self) -> None:
        c = self.client("usage")
        c.classify(PHOTOS[0], top_k=1)
        future = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
        self.assertEqual(c.usage(since=future)["total_requests"], 0)
        past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
        self.assertGreaterEqual(c.usage(since=past)["total_requests"], 1)
        self.assertGreaterEqual(c.usage(since=past.strftime("%Y-%m-%dT%H:%M:%SZ"))["total_requests"], 1)


class TestCLI(LiveTest):
    def cli(self, *args: str, key: Optional[str] = None, url: Optional[str] = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(PKG_DIR) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["INFERGATE_URL"] = url or self.url
        env["INFERGATE_API_KEY"] = key if key is not None else self.server.keys["cli"]
        return subprocess.run([CLI_PYTHON, "-m", "infergate_client", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=timeout)

    def lines(self, r: subprocess.CompletedProcess) -> List[Dict[str, Any]]:
        self.assertEqual(r.returncode, 0, r.stderr)
        return [json.loads(line) for line in r.stdout.splitlines()]

    def test_classify(self) -> None:
        paths = [str(PHOTOS[0]), str(PHOTOS[2])]
        out = self.lines(self.cli("classify", *paths))
        self.assertEqual([o["image"] for o in out], paths)
        self.assertEqual({o["transport"] for o in out}, {"post"})
        self.assertIn(out[0]["predictions"][0]["index"], DOG_TOP1)
        self.assertIn(KITE_INDEX, [p["index"] for p in out[1]["predictions"][:2]])

    def test_stream_each_transport(self) -> None:
        paths = [str(p) for p in PHOTOS]
        for transport in ("ws", "sse", "post", "auto"):
            with self.subTest(transport=transport):
                out = self.lines(self.cli("stream", "--transport", transport, *paths))
                self.assertEqual([o["image"] for o in out], paths)
                self.assertEqual({o["transport"] for o in out}, {"ws" if transport == "auto" else transport})
                for o in out:
                    self.assertTrue(o["predictions"])
                self.assertIn(out[0]["predictions"][0]["index"], DOG_TOP1)
                self.assertIn(KITE_INDEX, [p["index"] for p in out[2]["predictions"][:2]])

    def test_stream_retry_and_fps(self) -> None:
        out = self.lines(self.cli("stream", "--transport", "ws", "--retry", *[str(PHOTOS[0])] * 4,
                                  key=self.server.keys["fps2"]))
        self.assertEqual(len(out), 4)
        self.assertTrue(all("predictions" in o for o in out), out)
        out = self.lines(self.cli("stream", "--fps", "1.5", *[str(PHOTOS[0])] * 3, key=self.server.keys["fps2"]))
        self.assertTrue(all("predictions" in o for o in out), out)

    def test_stream_latest_mode(self) -> None:
        out = self.lines(self.cli("stream", "--transport", "ws", "--mode", "latest", "--top-k", "2",
                                  *[str(PHOTOS[0])] * 8, key=self.server.keys["fps2"]))
        self.assertEqual(len(out), 8)
        self.assertFalse([o for o in out if "error" in o], out)
        skipped = [o for o in out if o.get("skipped")]
        self.assertTrue(skipped, out)
        for o in skipped:
            self.assertGreater(o["superseded_by"], o["seq"])
        self.assertEqual(len(out[-1]["predictions"]), 2)

    def test_image_error_exit_code(self) -> None:
        r = self.cli("classify", str(PHOTOS[0]), str(REPO / "go.mod"))
        self.assertEqual(r.returncode, 1)
        out = [json.loads(line) for line in r.stdout.splitlines()]
        self.assertEqual(len(out), 2)
        self.assertIn("predictions", out[0])
        self.assertEqual(out[1]["error"]["code"], "invalid_image")

    def test_auth_failure(self) -> None:
        for args in (("classify", str(PHOTOS[0])), ("stream", "--transport", "ws", str(PHOTOS[0])),
                     ("stream", "--transport", "sse", str(PHOTOS[0])), ("usage",)):
            with self.subTest(args=args):
                r = self.cli(*args, key=BAD_KEY)
                self.assertEqual(r.returncode, 3, r.stderr)
                self.assertEqual(r.stdout, "")
                self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
                self.assertIn("authentication failed", r.stderr)

    def test_connection_failure(self) -> None:
        for args in (("classify", str(PHOTOS[0])), ("stream", str(PHOTOS[0]))):
            with self.subTest(args=args):
                r = self.cli(*args, url="http://127.0.0.1:1")
                self.assertEqual(r.returncode, 4, r.stderr)
                self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
                self.assertIn("connection failed", r.stderr)

    def test_usage_and_info(self) -> None:
        r = self.cli("usage")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("total_requests", json.loads(r.stdout))
        r = self.cli("usage", "--since", "2000-01-01T00:00:00Z")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("by_transport", json.loads(r.stdout))
        r = self.cli("info", key="")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["status"], "loaded")

    def test_options_after_command(self) -> None:
        r = self.cli("classify", "--url", self.url, "--key", self.server.keys["cli"], str(PHOTOS[0]),
                     url="http://127.0.0.1:1", key=BAD_KEY)
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_webcam_without_camera(self) -> None:
        r = self.cli("stream", "--webcam", timeout=60)
        self.assertEqual(r.returncode, 2, r.stderr)
        last = r.stderr.strip().splitlines()[-1]  # OpenCV may log warnings before it
        self.assertTrue(last.startswith("infergate: "), r.stderr)
        self.assertRegex(last, "OpenCV|camera")


class TestExample(LiveTest):
    def test_analyze_folder(self) -> None:
        env = dict(os.environ, INFERGATE_URL=self.url, INFERGATE_API_KEY=self.server.keys["main"])
        script = PKG_DIR / "examples" / "analyze_folder.py"
        r = subprocess.run([CLI_PYTHON, str(script), str(IMAGES), "--json"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        report = json.loads(r.stdout)
        self.assertEqual(report["summary"]["total"], len(PHOTOS))
        self.assertEqual(report["summary"]["classified"], len(PHOTOS))
        self.assertIn(report["photos"][0]["index"], DOG_TOP1)
        self.assertEqual(sum(report["summary"]["top_labels"].values()), len(PHOTOS))
        self.assertGreater(report["summary"]["mean_server_latency_ms"], 0)
        r = subprocess.run([CLI_PYTHON, str(script), str(IMAGES)], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("dog.jpg", r.stdout)
        self.assertIn("mean latency", r.stdout)


def _padded(path: Path, size: int) -> bytes:
    """A JPEG of about size bytes: path's, with comment segments (which decoders skip)
    after its start marker."""
    data = path.read_bytes()
    segment = b"\xff\xfe" + (65535).to_bytes(2, "big") + b"\0" * 65533
    return data[:2] + segment * (size // len(segment)) + data[2:]


def _drop_connection(stream: Any) -> None:
    """Shut the TCP socket of a WebSocket stream down under the client: no close frame
    goes either way, as when a network or a proxy drops the connection."""
    import socket

    sock = stream._a._adapter.ws.transport.get_extra_info("socket")
    sock.shutdown(socket.SHUT_RDWR)


class TestLatestMode(LiveTest):
    """mode="latest" on the fps2 key (2 frames per second): frames sent faster than
    that replace the one waiting, which is answered "skipped"; none is refused."""

    def test_skipped_not_rate_limited(self) -> None:
        for transport in ("ws", "sse"):
            with self.subTest(transport=transport):
                with self.client("fps2").stream([PHOTOS[0]] * 12, transport=transport, mode="latest") as s:
                    items = list(s)
                self.assertEqual(s.session, {"mode": "latest", "top_k": 5, "fps": 2})
                self.assertEqual(s.ready["session"], s.session)
                self.assertEqual(s.limits["frames"], 2)
                self.assertEqual([i["id"] for i in items], list(range(12)))
                self.assertEqual([i.get("error") for i in items], [None] * 12, "a frame was refused")
                seqs = [i["seq"] for i in items]
                self.assertEqual(seqs, sorted(set(seqs)))
                skipped = [i for i in items if isinstance(i, Skipped)]
                results = [i for i in items if not isinstance(i, Skipped)]
                self.assertTrue(skipped, "no frame was skipped")
                self.assertTrue(results)
                self.assertNotIsInstance(items[-1], Skipped, "the newest frame was not answered")
                for i in skipped:
                    self.assertTrue(i["skipped"])
                    self.assertNotIn("predictions", i)
                    self.assertGreater(i["superseded_by"], i["seq"], i)
                    self.assertGreater(i["superseded_by_id"], i["id"], i)
                    self.assertIn(i["superseded_by"], seqs)
                for i in results:
                    self.assertIn(i["predictions"][0]["index"], DOG_TOP1)
                    self.assertEqual(len(i["predictions"]), 5)
                    self.assertEqual(set(i["timing"]), {"queue_ms", "decode_ms", "preprocess_ms",
                                                        "inference_ms", "log_ms"})
                    self.assertGreaterEqual(i["batch"], 1)

    def test_ordered_still_refuses(self) -> None:
        with self.client("fps2").stream([PHOTOS[0]] * 6, transport="ws", mode="ordered", top_k=1) as s:
            items = list(s)
        self.assertEqual(s.session["mode"], "ordered")
        self.assertIn("rate_limited", [i["error"]["code"] for i in items if "error" in i])
        self.assertFalse(any(isinstance(i, Skipped) for i in items))

    def test_bad_settings_at_open(self) -> None:
        for transport in ("ws", "sse"):
            for settings in ({"mode": "fast"}, {"fps": 3}, {"top_k": 0}):
                with self.subTest(transport=transport, settings=settings):
                    with self.assertRaises(InvalidRequestError):
                        list(self.client("fps2").stream(PHOTOS[:1], transport=transport, session=settings))

    def test_post_has_no_mode(self) -> None:
        with self.assertRaises(ValueError):
            self.client().stream(PHOTOS[:1], transport="post", mode="latest")
        items = list(self.client().stream(PHOTOS[:1], transport="post", top_k=2))
        self.assertEqual(len(items[0]["predictions"]), 2)


class TestSessionUpdate(LiveTest):
    def test_round_trip(self) -> None:
        for transport in ("ws", "sse"):
            with self.subTest(transport=transport):
                with self.client().stream([PHOTOS[0]] * 20, transport=transport) as s:
                    items = [next(s)]
                    self.assertEqual(s.session, {"mode": "ordered", "top_k": 5, "fps": 1000})
                    self.assertEqual(s.update(top_k=2, fps=500), {"mode": "ordered", "top_k": 2, "fps": 500})
                    self.assertEqual(s.session["top_k"], 2)
                    self.assertEqual(s.limits["frames"], 500)
                    items.extend(s)
                self.assertEqual([i["id"] for i in items], list(range(20)))
                counts = [len(i["predictions"]) for i in items]
                # Frames sent before the update keep top_k 5, the ones after get 2.
                self.assertEqual(counts, sorted(counts, reverse=True), counts)
                self.assertEqual(counts[0], 5)
                self.assertEqual(counts[-1], 2)

    def test_bad_update_keeps_the_stream(self) -> None:
        for transport in ("ws", "sse"):
            with self.subTest(transport=transport):
                with self.client("fps2").stream([PHOTOS[0]] * 3, transport=transport, fps=1.9) as s:
                    items = [next(s)]
                    for bad in ({"fps": 3}, {"fps": 0}, {"mode": "fast"}, {"top_k": 1001}):
                        with self.assertRaises(InvalidRequestError, msg=str(bad)) as cm:
                            s.update(**bad)
                        self.assertEqual(cm.exception.code, "invalid_request")
                    self.assertEqual(s.session, {"mode": "ordered", "top_k": 5, "fps": 2})
                    self.assertEqual(s.update(mode="latest"), {"mode": "latest", "top_k": 5, "fps": 2})
                    items.extend(s)
                self.assertEqual([i["id"] for i in items], [0, 1, 2])
                self.assertEqual([i.get("error") for i in items], [None] * 3)

    def test_update_to_latest_mid_stream(self) -> None:
        frames: "queue.Queue[Any]" = queue.Queue()

        def camera() -> Any:  # yields what the test puts, as a camera would
            while True:
                frame = frames.get(timeout=60)
                if frame is None:
                    return
                yield frame

        with self.client("fps2").stream(camera(), transport="ws") as s:
            frames.put(PHOTOS[0])
            items = [next(s)]
            self.assertEqual(s.update(mode="latest")["mode"], "latest")
            for _ in range(13):  # far faster than 2 per second: the waiting one is replaced
                frames.put(PHOTOS[0])
            frames.put(None)
            items.extend(s)
        self.assertEqual([i["id"] for i in items], list(range(14)))
        self.assertEqual([i.get("error") for i in items], [None] * 14)
        self.assertTrue(any(isinstance(i, Skipped) for i in items), "no frame was skipped")


class TestResume(LiveTest):
    """A WebSocket whose TCP connection is shut down under the client (no close frame)
    is resumed: every frame still gets exactly one answer, in order, and the server
    reads and logs every frame once."""

    def _run(self, key: str, n: int, drop_after: int, frames: Optional[List[Any]] = None,
             **kw: Any) -> List[Dict[str, Any]]:
        """Stream n frames, drop the connection after drop_after items, and check the
        client's promise: one item per frame, in order, each its frame's own."""
        c = self.client(key)
        self.logged_before = c.usage()["by_transport"]["ws"]
        if frames is None:
            frames = [PHOTOS[i % len(PHOTOS)] for i in range(n)]
        items: List[Dict[str, Any]] = []
        with c.stream(frames, transport="ws", top_k=1, **kw) as s:
            for item in s:
                items.append(item)
                if len(items) == drop_after:
                    _drop_connection(s)
            session_id = s.session_id
        self.stream = s
        self.assertEqual(s.resumes, 1)
        self.assertEqual(s.session_id, session_id)
        self.assertEqual([i["id"] for i in items], list(range(n)))
        self.assertEqual([i.get("error") for i in items], [None] * n)
        seqs = [i["seq"] for i in items]
        self.assertEqual(seqs, sorted(set(seqs)), "seqs not increasing")
        top = {p: c.classify(p, top_k=1)["predictions"][0]["index"] for p in set(map(str, PHOTOS))}
        for i in items:
            if not isinstance(i, Skipped) and i["source"] in top:
                self.assertEqual(i["predictions"][0]["index"], top[i["source"]], i)  # its own answer
        return items

    def assertReadOnce(self, key: str, items: List[Dict[str, Any]]) -> None:
        """The server's side: it read, inferred and logged each frame once (no frame
        the client sent again had been read before the drop)."""
        adapter = self.stream._a._adapter
        logged = self.client(key).usage()["by_transport"]["ws"] - self.logged_before
        answered = sum(1 for i in items if not isinstance(i, Skipped))
        self.assertEqual(
            (adapter.duplicates, adapter.renumbered, logged), (0, 0, answered),
            "(answers dropped as duplicates, times the server's seqs ran ahead, log rows) "
            "!= (0, 0, frames answered): a frame was read and inferred twice across the resume; "
            "received_seq did not count every frame the old connection read")

    def test_ordered(self) -> None:
        self._run("resume", 40, 5)

    def test_latest(self) -> None:
        self._run("resume", 60, 3, mode="latest")

    def test_big_frames(self) -> None:
        self._run("resume", 12, 3, frames=[_padded(PHOTOS[0], 3 << 20)] * 12)

    def test_server_reads_each_frame_once(self) -> None:
        # Frames of 3 MB: when the connection drops, some are still in the server's
        # socket buffer, unread, while the client resumes.
        big = _padded(PHOTOS[0], 3 << 20)
        for n in range(3):
            with self.subTest(run=n):
                items = self._run("readonce", 12, 3, frames=[big] * 12)
                self.assertReadOnce("readonce", items)

    def test_client_token(self) -> None:
        tok = self.client("resume").mint_token(session={"mode": "ordered"})["token"]
        c = self.client(BAD_KEY)  # the resume token alone resumes it
        items: List[Dict[str, Any]] = []
        with c.stream([PHOTOS[0]] * 30, transport="ws", token=tok, top_k=1) as s:
            self.assertTrue(s.open().ready["resume"]["token"].startswith("rt_"), s.ready)
            for item in s:
                items.append(item)
                if len(items) == 4:
                    _drop_connection(s)
        self.assertEqual(s.resumes, 1)
        self.assertEqual([i["id"] for i in items], list(range(30)))
        self.assertEqual([i.get("error") for i in items], [None] * 30)

    def test_resume_refused(self) -> None:
        """A resume the server refuses raises ResumeError, after the items that were
        complete: with the API key (a fresh session, resumed: false, which the client
        closes) and with a resume token (close 4401 "resume failed: ...")."""
        for how in ("key", "token"):
            with self.subTest(how=how):
                c = self.client("resume")
                token = c.mint_token()["token"] if how == "token" else None
                items: List[Dict[str, Any]] = []
                with self.assertRaises(ResumeError) as cm:
                    with c.stream([PHOTOS[0]] * 30, transport="ws", token=token, top_k=1) as s:
                        for item in s:
                            items.append(item)
                            if len(items) == 2:
                                s._a._adapter.resume_info["session_id"] = "no-such-session"
                                _drop_connection(s)
                self.assertEqual(cm.exception.reason, "not_found", cm.exception)
                self.assertIsInstance(cm.exception, TransportError)
                self.assertEqual([i["id"] for i in items], list(range(len(items))))
                self.assertGreaterEqual(len(items), 2)
                self.assertLess(len(items), 30)

    def test_without_resume(self) -> None:
        c = self.client("resume")
        with self.assertRaises(TransportError) as cm:
            with c.stream([PHOTOS[0]] * 30, transport="ws", resume=False) as s:
                for n, _ in enumerate(s):
                    if n == 2:
                        _drop_connection(s)
        self.assertNotIsInstance(cm.exception, ResumeError)

    def test_ready_offers_resume(self) -> None:
        with self.client().stream(PHOTOS[:1], transport="ws") as s:
            s.open()
            r = s.ready["resume"]
            self.assertEqual(r["session_id"], s.session_id)
            self.assertGreater(r["window_ms"], 0)
            list(s)


class TestClientTokenSettings(LiveTest):
    def test_latest_mode_token(self) -> None:
        tok = self.client("fps2").mint_token(session={"mode": "latest", "top_k": 2})["token"]
        with self.client(BAD_KEY).stream([PHOTOS[0]] * 10, transport="ws", token=tok) as s:
            items = list(s)
        self.assertEqual(s.session, {"mode": "latest", "top_k": 2, "fps": 2})
        self.assertEqual([i.get("error") for i in items], [None] * 10)
        self.assertTrue(any(isinstance(i, Skipped) for i in items))
        self.assertEqual(len(items[-1]["predictions"]), 2)

    def test_settings_on_top_of_the_token(self) -> None:
        for transport in ("ws", "sse"):
            with self.subTest(transport=transport):
                tok = self.client("fps2").mint_token(session={"mode": "latest", "top_k": 2})["token"]
                with self.client(BAD_KEY).stream([PHOTOS[0]] * 4, transport=transport, token=tok, top_k=3) as s:
                    items = list(s)
                self.assertEqual(s.session, {"mode": "latest", "top_k": 3, "fps": 2})
                self.assertEqual(len(items[-1]["predictions"]), 3)


class TestOffline(unittest.TestCase):
    """Parts that need no server."""

    def test_sniff(self) -> None:
        from infergate_client._http import sniff_content_type

        self.assertEqual(sniff_content_type(b"\xff\xd8\xff\xe0rest"), "image/jpeg")
        self.assertEqual(sniff_content_type(b"\x89PNG\r\n\x1a\n...."), "image/png")
        self.assertEqual(sniff_content_type(b"GIF89a..."), "image/gif")
        self.assertEqual(sniff_content_type(b"RIFF\x00\x00\x00\x00WEBPVP8 "), "image/webp")
        self.assertEqual(sniff_content_type(b"not an image"), "application/octet-stream")

    def test_error_mapping(self) -> None:
        from infergate_client.errors import error_from_close, error_from_response

        body = b'{"error":{"code":"rate_limited","message":"slow down"},"request_id":"r1"}'
        e = error_from_response(429, {"Retry-After": "2"}, body)
        self.assertIsInstance(e, RateLimitError)
        self.assertEqual((e.retry_after, e.request_id, e.status), (2.0, "r1", 429))
        e = error_from_response(429, {}, b'{"error":{"code":"rate_limited","message":'
                                         b'"too many open streams for this user (max_connections 4)"}}')
        self.assertIsInstance(e, ConnectionLimitError)
        self.assertIsInstance(error_from_response(413, {}, b""), infergate_client.ImageTooLargeError)
        self.assertIsInstance(error_from_response(503, {}, b'{"error":{"code":"overloaded","message":"x"}}'),
                              infergate_client.OverloadedError)
        self.assertIsInstance(error_from_response(400, {}, b'{"error":{"code":"invalid_request","message":"x"}}'),
                              infergate_client.InvalidRequestError)
        self.assertIsInstance(error_from_close(4401, "revoked"), AuthError)
        self.assertIsInstance(error_from_close(4429, ""), ConnectionLimitError)
        self.assertIsInstance(error_from_close(1006, ""), TransportError)

    def test_bad_arguments(self) -> None:
        c = Client("http://127.0.0.1:1", api_key=BAD_KEY)
        with self.assertRaises(ValueError):
            list(c.stream(PHOTOS, transport="carrier-pigeon"))
        with self.assertRaises(ValueError):
            list(c.stream(PHOTOS, fps=0))
        with self.assertRaises(ValueError):
            Client("ftp://example.invalid")


if __name__ == "__main__":
    unittest.main(verbosity=2)
