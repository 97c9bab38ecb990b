#!/usr/bin/env python3
"""Analyze a folder of photos with infergate: a label per photo, then a summary.

    PYTHONPATH=clients/python python3 clients/python/examples/analyze_folder.py assets/images

Every photo (.jpg, .jpeg, .png, .gif, .webp) goes through one stream (WebSocket when it
opens, else SSE, else POST), pipelined; the results come back in file order. Frames the
server rate-limits are sent again after the wait it asks for, so a large folder is
analyzed at the key's frame rate without errors.

The server URL and API key come from --url/--key or INFERGATE_URL/INFERGATE_API_KEY.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from typing import Any, Dict, List

# Run from a checkout without installing: make the package beside this folder importable.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from infergate_client import AuthError, Client, InfergateError, TransportError  # noqa: E402

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".webp")


def find_photos(folder: str, recursive: bool) -> List[str]:
    found = []
    if recursive:
        for root, _dirs, files in os.walk(folder):
            found += [os.path.join(root, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    else:
        found = [os.path.join(folder, f) for f in os.listdir(folder)
                 if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, f))]
    return sorted(found)


def short_label(label: str) -> str:
    """ImageNet labels list synonyms ("malamute, malemute, Alaskan malamute"): keep the first."""
    return label.split(",")[0].strip()


def mean(xs: List[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def analyze(client: Client, photos: List[str], transport: str, fps: Any) -> Dict[str, Any]:
    rows: List[Dict[str, Any]] = []
    for item in client.stream(photos, transport=transport, fps=fps, top_k=3, retry_rate_limited=True):
        row: Dict[str, Any] = {"photo": item["source"], "transport": item["transport"],
                               "rtt_ms": item.get("rtt_ms")}
        if "error" in item:
            row["error"] = item["error"]["code"] + ": " + item["error"].get("message", "")
        else:
            top = item["predictions"][0]
            row.update(label=top["label"], index=top["index"], confidence=top["confidence"],
                       latency_ms=item.get("latency_ms"))
        rows.append(row)
    ok = [r for r in rows if "error" not in r]
    counts = collections.Counter(short_label(r["label"]) for r in ok)
    server_ms = [r["latency_ms"] for r in ok if isinstance(r.get("latency_ms"), (int, float))]
    client_ms = [r["rtt_ms"] for r in rows if isinstance(r.get("rtt_ms"), (int, float))]
    return {
        "photos": rows,
        "summary": {
            "total": len(rows),
            "classified": len(ok),
            "failed": len(rows) - len(ok),
            "transport": rows[0]["transport"] if rows else None,
            "top_labels": dict(counts.most_common()),
            "mean_server_latency_ms": round(mean(server_ms), 2) if server_ms else None,
            "mean_round_trip_ms": round(mean(client_ms), 2) if client_ms else None,
            "mean_top1_confidence": round(mean([r["confidence"] for r in ok]), 4) if ok else None,
        },
    }


def print_report(report: Dict[str, Any], folder: str) -> None:
    rows, s = report["photos"], report["summary"]
    width = max([len(os.path.relpath(r["photo"], folder)) for r in rows] + [5])
    print(f"{'photo':<{width}}  {'top label':<32} confidence")
    print("-" * (width + 45))
    for r in rows:
        name = os.path.relpath(r["photo"], folder)
        if "error" in r:
            print(f"{name:<{width}}  ERROR {r['error']}")
        else:
            print(f"{name:<{width}}  {short_label(r['label'])[:32]:<32} {r['confidence'] * 100:6.1f}%")
    print()
    print(f"{s['classified']} of {s['total']} photos classified over {s['transport']}"
          + (f", {s['failed']} failed" if s["failed"] else ""))
    if s["top_labels"]:
        print("top labels:")
        for label, n in s["top_labels"].items():
            print(f"  {n:4d}  {label}")
    if s["mean_server_latency_ms"] is not None:
        print(f"mean latency: {s['mean_server_latency_ms']:.1f} ms on the server, "
              f"{s['mean_round_trip_ms']:.1f} ms round trip")
    elif s["mean_round_trip_ms"] is not None:
        print(f"mean latency: {s['mean_round_trip_ms']:.1f} ms round trip")


def main() -> int:
    p = argparse.ArgumentParser(description="Label every photo of a folder with infergate.")
    p.add_argument("folder")
    p.add_argument("--url", default=os.environ.get("INFERGATE_URL", "http://127.0.0.1:8080"))
    p.add_argument("--key", default=None, help="API key (default: env INFERGATE_API_KEY)")
    p.add_argument("--transport", choices=["auto", "ws", "sse", "post"], default="auto")
    p.add_argument("--fps", default="auto",
                   help="frames per second to send; 'auto' (default) keeps under the stream's limit")
    p.add_argument("--recursive", "-r", action="store_true", help="also look in subfolders")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args()

    if not os.path.isdir(args.folder):
        print(f"analyze_folder: {args.folder} is not a folder", file=sys.stderr)
        return 2
    photos = find_photos(args.folder, args.recursive)
    if not photos:
        print(f"analyze_folder: no photos ({', '.join(IMAGE_EXTENSIONS)}) in {args.folder}", file=sys.stderr)
        return 1
    fps: Any = None if args.fps in ("", "none") else (args.fps if args.fps == "auto" else float(args.fps))
    try:
        with Client(args.url, api_key=args.key) as client:
            report = analyze(client, photos, args.transport, fps)
    except AuthError as e:
        print(f"analyze_folder: authentication failed: {e.message}", file=sys.stderr)
        return 3
    except TransportError as e:
        print(f"analyze_folder: connection failed: {e.message}", file=sys.stderr)
        return 4
    except InfergateError as e:
        print(f"analyze_folder: {e}", file=sys.stderr)
        return 5
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report, args.folder)
    return 0 if report["summary"]["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
