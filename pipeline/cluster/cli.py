"""`vidpipe cluster`: start a cluster run, status, add, remove, stop."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from engines.errors import ConfigError

ACTIONS = ("start", "status", "add", "remove", "stop")


def add_cluster_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "cluster",
        help="run the config's sources over a Ray cluster (start, status, add, remove, stop)",
        description="vidpipe cluster [--config FILE]: run the sources across a Ray cluster; "
        "vidpipe cluster status | add URL --name NAME | remove NAME | stop.",
    )
    parser.add_argument("action", nargs="?", choices=ACTIONS, default="start")
    parser.add_argument("target", nargs="?", help="add: the source's URL or path; remove: its name")
    parser.add_argument("--ray", metavar="ADDRESS", default=os.environ.get("RAY_ADDRESS"),
                        help="the Ray cluster (HOST:PORT or auto; default: $RAY_ADDRESS, else this "
                        "machine's, started with `ray start --head` if none runs)")
    parser.add_argument("--config", type=Path, help="start: a YAML config (its sources and outputs.redis)")
    parser.add_argument("--redis", metavar="URL", help="start: Redis to publish to (overrides outputs.redis.url)")
    parser.add_argument("--name", help="add: the new source's name")
    parser.add_argument(
        "--workers", type=int, help="start: pipeline workers (default: one per GPU, else per --worker-cpus)"
    )
    parser.add_argument("--worker-cpus", type=float, default=1.0, help="start: CPUs each worker reserves (default 1)")
    parser.add_argument(
        "--workers-per-gpu", type=int, default=1, metavar="N",
        help="start: pipeline workers sharing each GPU, each a process with 1/N of it (default 1; "
        "clusters without GPUs size by --worker-cpus alone)",
    )  # fmt: skip
    parser.add_argument("--max-frames", type=int, help="start: stop each source after N frames")
    parser.add_argument("--detach", action="store_true", help="start: return once the cluster runs")


def run_cluster(args: argparse.Namespace) -> int:
    from pipeline.cluster import client

    if args.action == "start":
        return _start(args)
    client.connect_ray(args.ray)
    if args.action == "status":
        _print_status(client.status(), client.ledger())
    elif args.action == "add":
        from pipeline.config import SourceConfig

        if not args.target:
            raise ConfigError("vidpipe cluster add needs the source: vidpipe cluster add rtsp://HOST/PATH --name NAME")
        name = client.add_source(SourceConfig(url=args.target, name=args.name))
        print(f"added {name}")
    elif args.action == "remove":
        if not args.target:
            raise ConfigError("vidpipe cluster remove needs the source's name (vidpipe cluster status lists them)")
        client.remove_source(args.target)
        print(f"removed {args.target}")
    elif args.action == "stop":
        client.stop_cluster()
        print("cluster stopped")
    return 0


def _start(args: argparse.Namespace) -> int:
    from pipeline.cli.exits import EXIT_INTERRUPTED, EXIT_LEDGER
    from pipeline.cluster import client
    from pipeline.config import build_config, load_config, merge

    data = load_config(args.config) if args.config else {}
    overrides: dict[str, Any] = {"progress": False}
    if args.redis:
        overrides["outputs"] = {"redis": {"url": args.redis}}
    if args.max_frames:
        overrides["max_frames"] = args.max_frames
    config = build_config(merge(data, overrides), str(args.config or "flags"))
    if not 1 <= args.workers_per_gpu <= 16:
        raise ConfigError(f"--workers-per-gpu {args.workers_per_gpu}: give 1 to 16 workers per GPU")
    client.connect_ray(args.ray, start_local=True)
    client.start_cluster(config, args.workers, args.worker_cpus, args.workers_per_gpu)
    if args.detach:
        print("cluster started; vidpipe cluster status shows it, vidpipe cluster stop ends it")
        return 0
    try:
        client.wait_finished()
    except KeyboardInterrupt:
        print("\nleft the cluster running; vidpipe cluster stop ends it", file=sys.stderr)
        return EXIT_INTERRUPTED
    ledgers = client.ledger()
    _print_status(client.status(), ledgers)
    print("every source has ended; the workers stay up for more (vidpipe cluster add), vidpipe cluster stop ends them")
    if not all(entry["balanced"] for entry in ledgers.values()):
        for name, entry in ledgers.items():
            if not entry["balanced"]:
                print(f"vidpipe: error: {name}: {_imbalance(entry)}", file=sys.stderr)
        return EXIT_LEDGER
    return 0


def _imbalance(entry: dict[str, Any]) -> str:
    parts = []
    if entry["missing"]:
        ranges = ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in entry["missing"][:5])
        parts.append(f"seqs {ranges} have no result in the stream (lost with a worker before they were published)")
    if entry["duplicates"]:
        parts.append(f"seqs {entry['duplicates'][:5]} published twice")
    if entry["expected"] is not None and entry["frames"] != entry["expected"]:
        parts.append(f"{entry['frames']} results for {entry['expected']} frames")
    return "; ".join(parts)


def _print_status(current: dict[str, Any], ledgers: dict[str, dict[str, Any]]) -> None:
    console = Console(file=sys.stdout, width=140)
    table = Table(title="vidpipe cluster")
    columns = ("source", "worker", "state", "fps", "decoded", "ok", "failed", "moves", "stream: results", "missing")
    for column in columns:
        table.add_column(column)
    total = {"frames": 0, "ok": 0, "failed": 0}
    for name, row in sorted(current["sources"].items()):
        segment = row["ledger"] or {"decoded": 0, "ok": 0, "failed": {}}
        stream = ledgers.get(name, {})
        for key in ("frames", "ok"):
            total[key] += stream.get(key, 0)
        total["failed"] += sum(stream.get("failed", {}).values())
        table.add_row(
            name, str(row["worker"] or "-"), row["state"], f"{row['fps']:.1f}", str(segment["decoded"]),
            str(segment["ok"]), str(sum(segment["failed"].values())), str(row["moves"]),
            str(stream.get("frames", "-")), str(len(stream.get("missing", [])) or "-"),
        )
    console.print(table)
    workers = ", ".join(
        f"{w} ({'alive' if info['alive'] else 'lost'}, pid {info.get('pid', '?')}"
        + (f", metrics :{info['metrics_port']}" if info.get("metrics_port") else "") + ")"
        for w, info in sorted(current["workers"].items())
    )
    console.print(f"workers: {workers}")
    console.print(
        f"cluster ledger (from the streams): {total['frames']} results = {total['ok']} ok + {total['failed']} failed"
    )


def register(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    """Add `vidpipe cluster` to the command line (pipeline/cli/main.py calls it)."""
    add_cluster_parser(sub)
    sub.choices[name].set_defaults(func=run_cluster)
