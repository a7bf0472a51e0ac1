"""vidpipe cluster scaling: 1 worker against N on the same sources, and the failover time.

    # this machine (CPU): 1 worker vs 2, three rounds each, interleaved, then a worker killed
    python samples/cluster_bench.py --sources 4 --max-frames 200 --repeats 3 --failover
    # a 2-GPU machine: one worker per GPU, 32 sources of the person clip
    python samples/cluster_bench.py --device cuda --gpus 2 --sources 32 --max-frames 300 --repeats 3 \
        --failover --redis-server .whl/bin/redis-server --model bm.onnx --time-limit-s 420 --json out.json

Needs only Python with vidpipe's dependencies, ray and redis-py importable, and a redis-server
binary (--redis-server, else redis-server on PATH, else .whl/bin/redis-server): it starts a
private redis-server on a free port and a new local Ray instance (ray.init(address="local");
no `ray` command), so nothing else has to be set up. Workers are actors of `vidpipe cluster`
(pipeline.cluster.client.start_cluster): one per GPU with --device cuda, else one per
--worker-cpus CPUs; every trial is a fresh cluster run to the end of every source.

Per trial: aggregate fps = frames with a result in the streams / the span from the first
result to the last (decode wall_time + latency; model loading is left out, `run_s` has it),
the cluster ledger (every seq exactly once), the machine's busy cores over the run (from
/proc/stat: everything on the machine, other users included) and the workers' own CPU
seconds per frame (from /proc/PID/stat, model loading included). Trials alternate 1, N, 1, N,
...; the ratio is per round, N workers' fps / 1 worker's, given as median, min and max.
With --failover, one more N-worker run kills a worker (SIGKILL) once its sources publish:
`moved_s` is the kill to the coordinator's last re-assignment of its sources, `resumed_s`
the kill to the last of them decoding its first frame on the new worker.

Progress goes to stderr; the figures are printed as one JSON object, the last line on stdout
(Ray may print its own lines there when a worker is killed); --json also writes them, with
every trial, to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# Ray's workers are new processes: they find vidpipe through PYTHONPATH, not this sys.path.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
DEFAULT_CLIP = ROOT.parent / "shared" / "media" / "one-by-one-person-detection.mp4"
WAIT_S = 540.0  # a hang guard per trial


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def redis_server(binary: str | None, directory: Path) -> tuple[subprocess.Popen, str]:
    """A private redis-server on a free port (no persistence); the process and its URL."""
    found = binary or shutil.which("redis-server") or str(ROOT / ".whl" / "bin" / "redis-server")
    if not Path(found).exists() and not shutil.which(found):
        sys.exit(f"cluster_bench: no redis-server at {found}; pass --redis-server PATH")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [
        found,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(directory),
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    import redis

    deadline = time.monotonic() + 30
    while True:
        try:
            redis.Redis.from_url(url).ping()
            return process, url
        except redis.ConnectionError:
            if time.monotonic() > deadline or process.poll() is not None:
                sys.exit(f"cluster_bench: {found} did not answer on port {port}")
            time.sleep(0.1)


def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc/PID/stat; 0 if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def frame_span(client, names: list[str], prefix: str) -> tuple[float, float]:
    """When the first and the last result over all the sources' streams came out: a frame's
    wall_time (its decoding) + its latency."""

    def done(fields) -> float | None:
        if fields[b"type"] != b"frame":
            return None
        record = json.loads(fields[b"data"])
        return record["wall_time"] + record["latency_ms"] / 1000

    first, last = [], []
    for name in names:
        head = [t for _, f in client.xrange(prefix + name, count=20) if (t := done(f)) is not None]
        tail = [t for _, f in client.xrevrange(prefix + name, count=20) if (t := done(f)) is not None]
        if head and tail:
            first.append(min(head))
            last.append(max(tail))
    return (min(first), max(last)) if first else (0.0, 0.0)


def trial(config, workers: int, worker_cpus: float, db, kill: bool = False, per_gpu: int = 1) -> dict:
    """One cluster run to the end of every source; its figures (see the module docstring)."""
    from pipeline.cluster import client

    db.flushall()
    busy0, total0 = cpu_jiffies()
    started = time.monotonic()
    client.start_cluster(config, workers, worker_cpus, per_gpu)
    failover = kill_a_worker(db, config) if kill else None
    final = client.wait_finished(poll_s=0.5, timeout_s=WAIT_S)
    run_s = time.monotonic() - started
    busy1, total1 = cpu_jiffies()
    worker_cpu_s = sum(process_cpu_s(info["pid"]) for info in final["workers"].values() if info.get("pid"))
    ledgers = client.ledger()
    frames = sum(entry["frames"] for entry in ledgers.values())
    first, last = frame_span(db, list(ledgers), config.outputs.redis.key_prefix)
    if failover is not None:
        failover.update(resume_times(db, config, final, failover.pop("victims"), failover.pop("killed_at")))
    client.stop_cluster()
    cores = os.cpu_count() or 1
    out = {
        "workers": workers,
        "fps": round(frames / (last - first), 2) if last > first else 0.0,
        "frames": frames,
        "run_s": round(run_s, 2),
        "finished": final["finished"],
        "balanced": all(entry["balanced"] for entry in ledgers.values()),
        "ok": sum(entry["ok"] for entry in ledgers.values()),
        "busy_cores": round(cores * (busy1 - busy0) / max(1, total1 - total0), 2),
        "worker_cpu_ms_per_frame": round(1000 * worker_cpu_s / max(1, frames), 1),
        "worker_cores": round(worker_cpu_s / run_s, 2),  # what the workers got of the machine
        "loadavg_1m": float(Path("/proc/loadavg").read_text().split()[0]),  # others' load shows here
    }
    if failover is not None:
        out["failover"] = failover
    log(f"  {workers} worker(s): {json.dumps(out)}")
    return out


def kill_a_worker(db, config) -> dict:
    """SIGKILL vidpipe-worker-0 once every source of it has published 20 frames."""
    from pipeline.cluster import client

    victim, deadline = "vidpipe-worker-0", time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        current = client.status()
        if current["finished"]:
            break
        held = [n for n, row in current["sources"].items() if row["worker"] == victim and row["state"] == "running"]
        if held and all(db.xlen(config.outputs.redis.key_prefix + n) >= 20 for n in held):
            pid = current["workers"][victim]["pid"]
            killed_at = time.time()
            os.kill(pid, signal.SIGKILL)
            log(f"  killed {victim} (pid {pid}) holding {len(held)} sources")
            return {"victim": victim, "sources_held": len(held), "killed_at": killed_at, "victims": held}
        time.sleep(0.2)
    sys.exit("cluster_bench: the worker to kill never held a publishing source; give more --max-frames")


def resume_times(db, config, final: dict, victims: list[str], killed_at: float) -> dict:
    moved, resumed = [], []
    for name in victims:
        step = final["sources"][name]["history"][-1]
        if not step.get("moved_from"):
            continue  # it had ended before the kill was noticed
        moved.append(step["time"] - killed_at)
        for _, fields in db.xrange(config.outputs.redis.key_prefix + name):
            record = json.loads(fields[b"data"])
            if fields[b"type"] == b"frame" and record["seq"] >= step["first_seq"]:
                resumed.append(record["wall_time"] - killed_at)
                break
    return {
        "moved_s": round(max(moved), 2) if moved else None,
        "resumed_s": round(max(resumed), 2) if resumed else None,
    }


def build(args: argparse.Namespace, redis_url: str, spool: Path):
    from pipeline.cli.run import device_providers
    from pipeline.config import build_config, load_config, merge

    data = load_config(args.config) if args.config else {}
    sources = [{"url": str(Path(args.clip).resolve()), "name": f"cam{i}"} for i in range(args.sources)]
    fields = {"sources": sources, "progress": False, "max_frames": args.max_frames,
              "outputs": {"redis": {"url": redis_url, "spool_dir": str(spool)}},
              "model": {"providers": device_providers(args.device)}}  # fmt: skip
    if args.model != "default":
        fields["model"]["path"] = str(args.model or bench_model(spool.parent))
    return build_config(merge(data, fields), "cluster_bench")


def bench_model(directory: Path) -> Path:
    """samples/bench_model.py's detector-sized model (about 5 GFLOPs at 640x640), written once."""
    try:
        sys.path.insert(0, str(ROOT / "samples"))
        import bench_model
        import onnx
    except ImportError:
        sys.exit(
            "cluster_bench: building the bench model needs onnx; give --model FILE.onnx "
            "(python samples/bench_model.py bm.onnx writes one) or --model default"
        )
    path = directory / "bench-model.onnx"
    onnx.save(bench_model.build(), str(path))
    return path


def spread(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--clip", default=str(DEFAULT_CLIP), help="the video every source plays (default: the person clip)"
    )
    parser.add_argument("--sources", type=int, default=4)
    parser.add_argument("--max-frames", type=int, default=150, help="frames per source")
    parser.add_argument("--workers", type=int, default=2, help="the N compared with 1 worker")
    parser.add_argument(
        "--worker-cpus", type=float, help="CPUs each worker reserves (default 1; 16 with --device cuda)"
    )
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (one worker per GPU)")
    parser.add_argument(
        "--workers-per-gpu", type=int, default=1,
        help="workers sharing each GPU (each with that fraction of it): with --gpus 1 --workers 2 "
        "--workers-per-gpu 2, one GPU fed by one process against two",
    )  # fmt: skip
    parser.add_argument(
        "--model",
        help="an ONNX model; default: samples/bench_model.py's detector-sized one, "
        "built here; `default`: vidpipe's tiny embedded model",
    )
    parser.add_argument(
        "--config", type=Path, help="a vidpipe YAML config merged under the sources (infer: settings, ...)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--failover", action="store_true", help="then kill a worker in an N-worker run")
    parser.add_argument("--redis-server", help="the redis-server binary")
    parser.add_argument("--json", type=Path, help="also write the figures, with every trial, to this file")
    parser.add_argument("--gpus", type=int, help="GPUs Ray may use (default: what Ray finds)")
    parser.add_argument("--time-limit-s", type=float, help="start no trial that may end past this; print what is done")
    return parser.parse_args()


def run_trials(args: argparse.Namespace, worker_cpus: float) -> tuple[list[dict], dict | None]:
    """Alternate 1-worker and N-worker trials on a private Ray and Redis (then the failover
    trial); returns the trials and the failover trial (None when not run)."""
    import ray
    import redis

    from pipeline.cluster import NAMESPACE

    with tempfile.TemporaryDirectory(prefix="cluster-bench-") as tmp:
        server, url = redis_server(args.redis_server, Path(tmp))
        try:
            ray.init(
                address="local",
                namespace=NAMESPACE,
                include_dashboard=False,
                logging_level="ERROR",
                log_to_driver=False,
                num_gpus=args.gpus,
                object_store_memory=256 * 1024**2,
            )  # no data passes through it
            resources = ray.cluster_resources()
            log(f"ray: {resources.get('CPU', 0):.0f} CPUs, {resources.get('GPU', 0):.0f} GPUs; redis {url}")
            config = build(args, url, Path(tmp) / "spool")
            db = redis.Redis.from_url(url)
            trials, failover, began = [], None, time.monotonic()

            def time_left() -> bool:  # room for one more trial as long as the longest so far
                longest = max((t["run_s"] for t in trials), default=0.0)
                return args.time_limit_s is None or time.monotonic() - began + 1.2 * longest < args.time_limit_s

            for round_ in range(args.repeats):
                log(f"round {round_ + 1}/{args.repeats}")
                for workers in (1, args.workers) if round_ % 2 == 0 else (args.workers, 1):
                    if time_left():
                        trials.append(trial(config, workers, worker_cpus, db, per_gpu=args.workers_per_gpu))
            if args.failover and time_left():
                failover = trial(config, args.workers, worker_cpus, db, kill=True, per_gpu=args.workers_per_gpu)
        finally:
            ray.shutdown()
            server.kill()
    return trials, failover


def figures(args: argparse.Namespace, worker_cpus: float, trials: list[dict], failover: dict | None) -> dict:
    """The report: fps of 1 and N workers, their ratio per round, CPU use; exits when no pair finished."""
    one = [t["fps"] for t in trials if t["workers"] == 1]
    many = [t["fps"] for t in trials if t["workers"] == args.workers]
    ratios = [m / o for o, m in zip(one, many) if o] or [0.0]
    if not one or not many:
        sys.exit(f"cluster_bench: no comparison within --time-limit-s; trials: {json.dumps(trials)}")
    report = {
        "device": args.device, "sources": args.sources, "max_frames": args.max_frames, "cores": os.cpu_count(),
        "workers": args.workers, "worker_cpus": worker_cpus, "fps_1": spread(one), f"fps_{args.workers}": spread(many),
        "ratio": spread(ratios), "rounds": len(ratios), "cut_short": len(trials) < 2 * args.repeats,
        "of_linear": round(statistics.median(ratios) / args.workers, 3),
        "all_balanced": all(t["balanced"] and t["finished"] for t in trials),
        "busy_cores": {
            str(w): spread([t["busy_cores"] for t in trials if t["workers"] == w]) for w in (1, args.workers)
        },
        **{key: {str(w): spread([t[key] for t in trials if t["workers"] == w]) for w in (1, args.workers)}
           for key in ("worker_cpu_ms_per_frame", "worker_cores", "loadavg_1m")},
        "failover": failover and {**failover["failover"], "balanced": failover["balanced"], "fps": failover["fps"]},
    }  # fmt: skip
    return report


def main() -> None:
    args = parse_args()
    if not Path(args.clip).exists():
        sys.exit(f"cluster_bench: {args.clip}: no such file; give --clip")
    worker_cpus = args.worker_cpus or (16.0 if args.device.startswith("cuda") else 1.0)
    trials, failover = run_trials(args, worker_cpus)
    report = figures(args, worker_cpus, trials, failover)
    if args.json:
        args.json.write_text(json.dumps({**report, "trials": trials}, indent=1))
    print(json.dumps(report))

if __name__ == "__main__":
    main()
