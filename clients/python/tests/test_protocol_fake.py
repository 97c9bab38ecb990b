"""Tests of the client's 1.1 stream logic against a small fake of the WebSocket protocol.

A fake only where the real server cannot show the case on demand: a connection that
drops after the server has read some frames and before it has answered them, while
the client has more frames on the wire that the server never reads. The fake drops
the connection (no close frame) right after reading frame ``drop_at``, holding the
answers of the last two frames it read; on resume it reports ``received_seq``,
replays the held answers, and reads the frames the client sends again. The live
tests (test_client.py) run the same features against the real server.

Run with the others: ``bash clients/python/run_tests.sh``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import unittest
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional
from urllib.parse import parse_qs, urlsplit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from infergate_client import (  # noqa: E402
    AuthError,
    Client,
    InvalidRequestError,
    ResumeError,
    Skipped,
)

KEY = "ig_" + "k" * 40
FAKE_IMAGE = b"\xff\xd8\xff" + b"fake jpeg"


class _Session:
    def __init__(self, settings: Dict[str, Any]) -> None:
        self.id = "s_" + uuid.uuid4().hex[:12]
        self.seq = 0  # frames read
        self.ring: List[Dict[str, Any]] = []  # every answer, by seq
        self.settings = {"mode": "ordered", "top_k": 5, "fps": 10}
        self.settings.update(settings)
        self.dropped = 0
        self.resume_token = "rt_" + uuid.uuid4().hex
        self.updates_read = 0


class FakeServer:
    """The 1.1 WebSocket stream protocol, enough for the client: auth (header or first
    message, with settings), ready with session and resume, frames answered in order
    (latest mode: every odd frame is skipped, superseded by the next), session.update,
    and resume. ``drop_at``: drop the first connection (no close frame) after reading
    that frame. ``resume_error``: refuse every resume with it."""

    def __init__(self, drop_at: Optional[int] = None, resume_error: Optional[str] = None,
                 drops: int = 1) -> None:
        import websockets

        self.websockets = websockets
        self.drop_at = drop_at
        self.drops = drops
        self.resume_error = resume_error
        self.sessions: Dict[str, _Session] = {}
        self.connections = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(self._serve(), self.loop).result(10)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def _serve(self) -> Any:
        return await self.websockets.serve(self._handle, "127.0.0.1", 0)

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    async def _handle(self, ws: Any, path: Optional[str] = None) -> None:
        self.connections += 1
        path = path or getattr(ws, "path", None) or ws.request.path
        headers = getattr(ws, "request_headers", None) or ws.request.headers
        query = {k: v[0] for k, v in parse_qs(urlsplit(path).query).items()}
        auth = headers.get("Authorization")
        settings: Dict[str, Any] = {}
        resume: Optional[Dict[str, Any]] = None
        if auth is None:
            first = json.loads(await ws.recv())
            assert first["type"] == "auth", first
            settings = first.get("session") or {}
            resume = first.get("resume")
            if resume is not None:
                st = self.sessions.get(resume["session_id"])
                if st is None or resume.get("token") != st.resume_token:
                    await ws.close(4401, "resume failed: not_found")
                    return
                if self.resume_error:
                    await ws.close(4401, f"resume failed: {self.resume_error}")
                    return
            elif first.get("api_key") != KEY and not str(first.get("token", "")).startswith("ct_"):
                await ws.close(4401, "unknown API key")
                return
        elif auth != f"Bearer {KEY}":
            await ws.close(4401, "unknown API key")
            return
        elif "resume" in query:
            resume = {"session_id": query["resume"], "last_seq": int(query["last_seq"])}

        ready: Dict[str, Any] = {"type": "ready", "api_version": "v1", "model": "fake"}
        if resume is not None and not self.resume_error and resume["session_id"] in self.sessions:
            st = self.sessions[resume["session_id"]]
            ready.update(resumed=True, received_seq=st.seq)
            replay = [a for a in st.ring if a["seq"] > resume["last_seq"]]
        else:
            st = _Session(settings)
            self.sessions[st.id] = st
            replay = []
            if resume is not None:
                ready.update(resumed=False, resume_error=self.resume_error or "not_found")
        ready.update(session_id=st.id, session=dict(st.settings),
                     limits={"frames": st.settings["fps"], "window_ms": 1000, "max_in_flight": 4,
                             "max_message_bytes": 1 << 20},
                     resume={"session_id": st.id, "window_ms": 5000})
        if not ready.get("resumed"):
            ready["resume"]["token"] = st.resume_token  # given once, in the first ready
        await ws.send(json.dumps(ready))
        for a in replay:
            await ws.send(json.dumps(a))
        held: List[Dict[str, Any]] = []
        async for raw in ws:
            msg = json.loads(raw)
            if msg["type"] == "session.update":
                st.updates_read += 1
                new = msg.get("session") or {}
                if set(new) - {"mode", "top_k", "fps"} or not 1 <= new.get("fps", 1) <= 10 \
                        or new.get("mode", "ordered") not in ("ordered", "latest"):
                    await ws.send(json.dumps({"type": "error", "code": "invalid_request",
                                              "message": "bad session.update"}))
                    continue
                st.settings.update(new)
                await ws.send(json.dumps({"type": "session.updated", "session": dict(st.settings)}))
                continue
            assert msg["type"] == "frame", msg
            st.seq += 1
            if st.settings["mode"] == "latest" and st.seq % 2 == 1:
                answer = {"type": "skipped", "id": msg.get("id"), "seq": st.seq, "superseded_by": st.seq + 1}
            else:
                answer = {"type": "result", "id": msg.get("id"), "seq": st.seq, "model": "fake",
                          "predictions": [{"label": "frame", "index": msg.get("id"), "confidence": 1.0}]
                          * st.settings["top_k"],
                          "timing": {"queue_ms": 0.1, "decode_ms": 0.1, "preprocess_ms": 0.1,
                                     "inference_ms": 1.0, "log_ms": 0.1}, "batch": 1}
            st.ring.append(answer)
            if self.drop_at is not None and st.dropped < self.drops and st.seq >= self.drop_at * (st.dropped + 1):
                # Hold the answers of the last two frames read, and drop: the client
                # has sent more frames that are never read.
                held.append(answer)
                if len(held) >= 2 or st.seq == 1:
                    st.dropped += 1
                    ws.transport.abort()  # no close frame
                    return
                continue
            for h in held:
                await ws.send(json.dumps(h))
            held = []
            await ws.send(json.dumps(answer))


class FakeTest(unittest.TestCase):
    def fake(self, **kw: Any) -> FakeServer:
        try:
            server = FakeServer(**kw)
        except ImportError:
            self.fail("the 'websockets' package is missing (Debian: python3-websockets)")
        self.addCleanup(server.close)
        return server

    def items(self, server: FakeServer, n: int, **kw: Any) -> List[Dict[str, Any]]:
        c = Client(server.url, api_key=KEY, timeout=10)
        self.addCleanup(c.close)
        with c.stream([FAKE_IMAGE] * n, transport="ws", **kw) as s:
            out = list(s)
            self.stream = s
        return out

    def assertEachOnce(self, items: List[Dict[str, Any]], n: int) -> None:
        self.assertEqual([i["id"] for i in items], list(range(n)))
        seqs = [i["seq"] for i in items]
        self.assertEqual(seqs, sorted(seqs))
        self.assertEqual(len(set(seqs)), n)
        for i in items:
            self.assertNotIn("error", i, i)


class TestResume(FakeTest):
    def test_resume_replays_and_resends(self) -> None:
        server = self.fake(drop_at=6)
        items = self.items(server, 20, top_k=1)
        self.assertEachOnce(items, 20)
        for i in items:  # each answer is its own frame's
            self.assertEqual(i["predictions"][0]["index"], i["id"])
        self.assertEqual(self.stream.resumes, 1)
        self.assertEqual(server.connections, 2)
        adapter = self.stream._a._adapter
        self.assertGreater(adapter.resent, 0, "no frame was sent again")
        self.assertEqual(adapter.duplicates, 0)
        st = next(iter(server.sessions.values()))
        self.assertEqual(st.seq, 20, "a frame was read twice or never")  # frames resent, not read twice

    def test_resume_twice(self) -> None:
        server = self.fake(drop_at=5, drops=2)
        items = self.items(server, 16)
        self.assertEachOnce(items, 16)
        self.assertEqual(self.stream.resumes, 2)

    def test_resume_failed(self) -> None:
        server = self.fake(drop_at=4, resume_error="expired")
        c = Client(server.url, api_key=KEY, timeout=10)
        got: List[Dict[str, Any]] = []
        with self.assertRaises(ResumeError) as cm:
            for item in c.stream([FAKE_IMAGE] * 12, transport="ws"):
                got.append(item)
        self.assertEqual(cm.exception.reason, "expired")
        self.assertEqual([i["id"] for i in got], list(range(len(got))))
        self.assertLess(len(got), 12)

    def test_resume_off(self) -> None:
        server = self.fake(drop_at=4)
        c = Client(server.url, api_key=KEY, timeout=10)
        with self.assertRaises(Exception) as cm:
            list(c.stream([FAKE_IMAGE] * 12, transport="ws", resume=False))
        self.assertNotIsInstance(cm.exception, ResumeError)
        self.assertEqual(server.connections, 1)

    def test_token_stream_resumes_with_resume_token(self) -> None:
        server = self.fake(drop_at=6)
        c = Client(server.url, api_key=None, timeout=10)
        with c.stream([FAKE_IMAGE] * 14, transport="ws", token="ct_x", mode="ordered") as s:
            items = list(s)
        self.assertEachOnce(items, 14)
        self.assertEqual(s.resumes, 1)


class TestSettings(FakeTest):
    def test_open_with_settings_and_latest(self) -> None:
        server = self.fake()
        items = self.items(server, 6, mode="latest", top_k=2)
        self.assertEqual(self.stream.session, {"mode": "latest", "top_k": 2, "fps": 10})
        self.assertEqual([i["id"] for i in items], list(range(6)))
        for i in items[0::2]:
            self.assertIsInstance(i, Skipped)
            self.assertTrue(i["skipped"])
            self.assertEqual(i["superseded_by"], i["seq"] + 1)
            self.assertEqual(i["superseded_by_id"], i["id"] + 1)
            self.assertNotIn("predictions", i)
        for i in items[1::2]:
            self.assertNotIsInstance(i, Skipped)
            self.assertEqual(len(i["predictions"]), 2)

    def test_update(self) -> None:
        server = self.fake()
        c = Client(server.url, api_key=KEY, timeout=10)
        self.addCleanup(c.close)
        with c.stream([FAKE_IMAGE] * 4, transport="ws") as s:
            first = next(s)
            self.assertEqual(s.session["mode"], "ordered")
            self.assertEqual(s.update(top_k=3, fps=4), {"mode": "ordered", "top_k": 3, "fps": 4})
            self.assertEqual(s.limits["frames"], 4)
            with self.assertRaises(InvalidRequestError):
                s.update(fps=99)
            self.assertEqual(s.session["fps"], 4)  # unchanged
            rest = list(s)
        self.assertEqual([i["id"] for i in [first] + rest], [0, 1, 2, 3])

    def test_update_across_a_resume(self) -> None:
        server = self.fake(drop_at=3)
        c = Client(server.url, api_key=KEY, timeout=10)
        self.addCleanup(c.close)
        with c.stream([FAKE_IMAGE] * 10, transport="ws") as s:
            got = [next(s)]
            self.assertEqual(s.update(top_k=2)["top_k"], 2)  # sent before the drop, answered after it
            got.extend(s)
        self.assertEachOnce(got, 10)
        self.assertEqual(s.resumes, 1)
        self.assertEqual(len(got[-1]["predictions"]), 2)

    def test_bad_key_message_auth(self) -> None:
        server = self.fake()
        c = Client(server.url, api_key="ig_" + "0" * 40, timeout=10)
        with self.assertRaises(AuthError):
            list(c.stream([FAKE_IMAGE], transport="ws", mode="latest"))


if __name__ == "__main__":
    unittest.main(verbosity=2)
