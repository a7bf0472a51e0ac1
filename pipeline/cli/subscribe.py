"""`vidpipe subscribe`: print results from Redis as they arrive, one line per entry."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from engines.errors import OutputError
from pipeline.sinks.redis.entries import resolve_redis_url
from pipeline.sinks.redis.subscriber import Delivery, subscribe

MAX_LABELS = 5


def add_subscribe_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "subscribe",
        help="print results from Redis Streams as they arrive",
        description=(
            "Read results from Redis as a member of a consumer group: every entry goes to one "
            "consumer of the group and is acknowledged once printed; entries left by a dead "
            "consumer are reclaimed. Ctrl-C stops."
        ),
    )
    parser.add_argument("--redis", metavar="URL", default=None,
                        help="redis://[:password@]host:port/db or rediss:// (default: $REDIS_URL)")
    parser.add_argument("--source", metavar="NAME", action="append", required=True,
                        help="source to follow; repeat for several")
    parser.add_argument("--group", default="vidpipe", help="consumer group (default: vidpipe)")
    parser.add_argument("--consumer", default=None, help="consumer name (default: host-pid)")
    parser.add_argument("--from-start", action="store_true",
                        help="a new group starts at the beginning of the stream, not its end")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--reclaim-idle-ms", type=int, default=30000, metavar="MS",
                        help="take over entries another consumer left pending this long "
                        "(default: 30000)")
    parser.add_argument("--key-prefix", default="vidpipe:results:",
                        help="stream key prefix, as in the run's outputs.redis.key_prefix")


def run_subscribe(args: argparse.Namespace) -> int:
    url = resolve_redis_url(args.redis)
    if not url:
        print("vidpipe subscribe: no Redis URL; pass --redis URL or set REDIS_URL", file=sys.stderr)
        return 2
    try:
        deliveries = subscribe(
            url, args.source, group=args.group, consumer=args.consumer,
            from_start=args.from_start, key_prefix=args.key_prefix,
            reclaim_idle_ms=args.reclaim_idle_ms,
        )
        for delivery in deliveries:
            print(format_json(delivery) if args.json else format_line(delivery), flush=True)
    except OutputError as err:
        print(f"vidpipe subscribe: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python's exit flush quiet too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0


GAP_CAUSES = {
    "trimmed": "trimmed before this group read them",
    "trimmed_pending": "read but not handled before they were trimmed",
    "lost": "lost by Redis: restarted without persistence?",
}


def format_line(d: Delivery) -> str:
    gap = ""
    if d.gap:
        first, last = d.gap
        cause = GAP_CAUSES.get(d.gap_cause or "trimmed", d.gap_cause)
        gap = f"{d.source} gap: #{first}-#{last} missing ({cause})"
    if d.kind == "gap":
        return gap
    line = _format_entry(d)
    return f"{gap}\n{line}" if gap else line


def _format_entry(d: Delivery) -> str:
    r = d.result
    if r is not None:
        timing = f"({r.latency_ms:.1f} ms)"
        if r.reason is not None:
            return f"{d.source} #{r.seq} failed {r.reason.value} after {r.attempts} attempts {timing}"
        dets = r.detections
        labels = [f"{label} {score:.2f}" for label, score in zip(dets.labels, dets.score)]
        shown = ", ".join(labels[:MAX_LABELS])
        if len(labels) > MAX_LABELS:
            shown += f", +{len(labels) - MAX_LABELS}"
        return f"{d.source} #{r.seq} ok {len(labels)} det{': ' + shown if shown else ''} {timing}"
    if d.kind == "summary":
        rec = d.record.get("sources", {}).get(d.source, {})
        failed = sum(rec.get("failed", {}).values())
        state = "balanced" if rec.get("balanced") else "NOT balanced"
        counts = f"{rec.get('decoded', 0)} frames, {rec.get('ok', 0)} ok, {failed} failed"
        return f"{d.source} summary: {counts} ({state})"
    shown_elsewhere = ("type", "source", "after_seq", "wall_time")
    details = {k: v for k, v in d.record.items() if k not in shown_elsewhere}
    extra = " " + json.dumps(details, separators=(",", ":")) if details else ""
    return f"{d.source} {d.kind} after #{d.record.get('after_seq')}{extra}"


def format_json(d: Delivery) -> str:
    return json.dumps(
        {**d.record, "source": d.source, "entry_id": d.entry_id,
         "gap": list(d.gap) if d.gap else None, "gap_cause": d.gap_cause},
        separators=(",", ":"),
    )


def register(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    """Add `vidpipe subscribe` to the command line (pipeline/cli/main.py calls it)."""
    add_subscribe_parser(sub)
    sub.choices[name].set_defaults(func=run_subscribe)
