"""Command line: ``python -m infergate_client COMMAND ...``.

Exit codes: 0 success; 1 some image got an error (its line says which); 2 bad usage;
3 authentication failed; 4 the server could not be reached or the connection broke;
5 any other error of the API. Errors that stop the command are one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, Iterator, List, Optional, Sequence

from .client import DEFAULT_URL, Client
from .errors import AuthError, InfergateError, TransportError

EXIT_OK, EXIT_IMAGE_ERRORS, EXIT_USAGE, EXIT_AUTH, EXIT_CONNECTION, EXIT_API = 0, 1, 2, 3, 4, 5


class _UsageError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    # The connection options are accepted before or after the command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS,
                        help=f"server base URL (env INFERGATE_URL, default {DEFAULT_URL})")
    common.add_argument("--key", default=argparse.SUPPRESS,
                        help="API key (env INFERGATE_API_KEY)")
    common.add_argument("--timeout", type=float, default=argparse.SUPPRESS,
                        help="seconds to wait for the server (default 30)")

    p = argparse.ArgumentParser(
        prog="python -m infergate_client", parents=[common],
        description="Classify images with an infergate server.",
        epilog="Exit codes: 0 ok, 1 some image failed, 2 bad usage, 3 authentication failed, "
               "4 server unreachable or connection lost, 5 other API error.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    c = sub.add_parser("classify", parents=[common], help="classify images one by one (POST /v1/classify)")
    c.add_argument("images", nargs="+", metavar="IMAGE")
    c.add_argument("--top-k", type=int, default=5, help="predictions per image (1-20, default 5)")

    s = sub.add_parser("stream", parents=[common], help="classify images over one stream (WebSocket, SSE or POST)")
    s.add_argument("images", nargs="*", metavar="IMAGE")
    s.add_argument("--transport", choices=["auto", "ws", "sse", "post"], default="auto",
                   help="auto tries ws, then sse, then post (default auto)")
    s.add_argument("--fps", default=None,
                   help="send at most N frames per second, or 'auto' for the stream's own limit "
                        "(default: as fast as the server answers; 'auto' with --webcam --mode ordered)")
    s.add_argument("--retry", action="store_true",
                   help="send rate-limited frames again after the wait the server asks for")
    s.add_argument("--top-k", type=int, default=None,
                   help="predictions per image (1-20; default: the stream's setting, 5 unless a token says)")
    s.add_argument("--mode", choices=["ordered", "latest"], default=None,
                   help="ordered answers every frame; latest only the newest, the others are skipped "
                        "(default: ordered; latest with --webcam)")
    s.add_argument("--no-resume", action="store_true",
                   help="do not resume a WebSocket stream whose connection dropped")
    s.add_argument("--webcam", action="store_true", help="stream camera frames (needs OpenCV: python3-opencv)")
    s.add_argument("--camera", type=int, default=0, help="camera index for --webcam (default 0)")
    s.add_argument("--frames", type=int, default=None, help="stop --webcam after N frames (default: until Ctrl-C)")

    u = sub.add_parser("usage", parents=[common], help="show this key's usage (GET /v1/usage)")
    u.add_argument("--since", default=None, help="only count from this RFC 3339 time, e.g. 2026-01-02T15:04:05Z")

    sub.add_parser("info", parents=[common], help="show the served model (GET /v1/model/info)")
    return p


def _emit(obj: Dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _fail(message: str) -> None:
    sys.stderr.write(f"infergate: {' '.join(message.split())}\n")
    sys.stderr.flush()


def _webcam(camera: int, frames: Optional[int]) -> Iterator[bytes]:
    try:
        import cv2  # type: ignore[import-not-found]
    except ImportError as e:
        raise _UsageError("--webcam needs OpenCV for Python (import cv2 failed: "
                          "install python3-opencv or opencv-python)") from e
    cap = cv2.VideoCapture(camera)
    if not cap.isOpened():
        raise _UsageError(f"cannot open camera {camera}")

    def frames_gen() -> Iterator[bytes]:
        try:
            n = 0
            while frames is None or n < frames:
                ok, frame = cap.read()
                if not ok:
                    return
                ok, buf = cv2.imencode(".jpg", frame)
                if ok:
                    n += 1
                    yield buf.tobytes()
        finally:
            cap.release()

    return frames_gen()


def _cmd_classify(client: Client, args: argparse.Namespace) -> int:
    status = EXIT_OK
    for path in args.images:
        line: Dict[str, Any] = {"image": path, "transport": "post"}
        try:
            line.update(client.classify(path, top_k=args.top_k))
        except (AuthError, TransportError):
            raise
        except InfergateError as e:
            line["error"] = {"code": e.code, "message": e.message}
            if e.request_id:
                line["error"]["request_id"] = e.request_id
            status = EXIT_IMAGE_ERRORS
        except OSError as e:
            line["error"] = {"code": "unreadable", "message": f"cannot read {path}: {e.strerror or e}"}
            status = EXIT_IMAGE_ERRORS
        _emit(line)
    return status


def _cmd_stream(client: Client, args: argparse.Namespace) -> int:
    fps: Any = args.fps
    if fps is not None and fps != "auto":
        try:
            fps = float(fps)
            if fps <= 0:
                raise ValueError
        except ValueError:
            raise _UsageError(f"--fps must be a positive number or 'auto', not {args.fps!r}")
    if args.webcam:
        if args.images:
            raise _UsageError("give IMAGE files or --webcam, not both")
        images: Any = _webcam(args.camera, args.frames)
        if args.mode is None:
            args.mode = "latest"  # a live camera wants the newest frame answered
        elif fps is None:
            fps = "auto"
        names: Optional[List[str]] = None
    else:
        if not args.images:
            raise _UsageError("stream needs IMAGE files or --webcam")
        images = args.images
        names = args.images
    status = EXIT_OK
    for item in client.stream(images, transport=args.transport, fps=fps, top_k=args.top_k,
                              retry_rate_limited=args.retry, mode=args.mode, resume=not args.no_resume):
        idx = item["id"]
        name = names[idx] if names is not None else f"webcam:{idx}"
        line: Dict[str, Any] = {"image": name, "transport": item["transport"], "seq": item.get("seq")}
        for k, v in item.items():
            if k not in ("id", "source", "transport", "seq"):
                line[k] = v
        if "error" in item:
            status = EXIT_IMAGE_ERRORS
        _emit(line)
    return status


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    url = getattr(args, "url", None) or os.environ.get("INFERGATE_URL") or DEFAULT_URL
    key = getattr(args, "key", None) or os.environ.get("INFERGATE_API_KEY") or None
    timeout = getattr(args, "timeout", None) or 30.0
    try:
        client = Client(url, api_key=key, timeout=timeout)
    except ValueError as e:
        _fail(str(e))
        return EXIT_USAGE
    try:
        with client:
            if args.command == "classify":
                return _cmd_classify(client, args)
            if args.command == "stream":
                return _cmd_stream(client, args)
            if args.command == "usage":
                print(json.dumps(client.usage(since=args.since), indent=2))
                return EXIT_OK
            if args.command == "info":
                print(json.dumps(client.model_info(), indent=2))
                return EXIT_OK
    except _UsageError as e:
        _fail(str(e))
        return EXIT_USAGE
    except AuthError as e:
        _fail(f"authentication failed: {e.message} (check --key or INFERGATE_API_KEY)")
        return EXIT_AUTH
    except TransportError as e:
        _fail(f"connection failed: {e.message}")
        return EXIT_CONNECTION
    except InfergateError as e:
        _fail(str(e))
        return EXIT_API
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # stdout closed early (| head): not an error of ours
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return EXIT_OK
    return EXIT_USAGE
