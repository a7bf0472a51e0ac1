"""A private redis-server for tests (own port and directory, killed and restarted at will),
and the results, events and summaries a run would publish to it."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import redis

from pipeline.config import RedisConfig
from pipeline.sinks.redis.sink import RedisSink
from pipeline.summary import RunSummary, SourceLedger
from stages.types import Detections, Reason, Result, SourceEvent, Status


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """redis-server on 127.0.0.1. `stop()` kills it (SIGKILL, as a crash), `pause()` hangs it;
    `start()` brings it back on the same port. With aof=True every write is fsync'd to an append-only file first,
    so a killed server comes back with everything it acknowledged."""

    def __init__(self, directory: Path, password: str | None = None, aof: bool = False) -> None:
        self.directory = directory
        self.port = free_port()
        self.password = password
        self.aof = aof
        self._process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True)

    def start(self) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.directory), "--save", ""]
        args += ["--appendonly", "yes", "--appendfsync", "always"] if self.aof else ["--appendonly", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        log = open(self.directory / "redis.log", "ab")
        self._process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with self.client() as c:
                    c.ping()
                return
            except redis.ConnectionError:
                if self._process.poll() is not None:
                    raise RuntimeError(f"redis-server exited: {(self.directory / 'redis.log').read_text()}")
                time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def pause(self) -> None:
        """SIGSTOP: connections stay open and nothing answers, as with a hung server."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after pause()."""
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    @property
    def running(self) -> bool:
        return self._process is not None


def frame_result(source: str, seq: int) -> Result:
    """Every 7th frame failed (deadline), the others ok with a car and a person."""
    if seq % 7 == 6:
        return Result(source, seq, seq / 30, Status.FAILED, Reason.DEADLINE, None, 2,
                      Detections.empty(), {"infer": 1.0}, 2001.5, time.time())
    detections = Detections(
        xyxy=np.array([[10, 20, 110, 220], [5, 5, 50, 90]], np.float32),
        score=np.array([0.91, 0.8], np.float32),
        class_id=np.array([2, 0], np.int32),
        labels=("car", "person"),
    )
    return Result(source, seq, seq / 30, Status.OK, None, None, 1, detections,
                  {"preprocess": 1.2, "infer": 8.4, "postprocess": 0.7}, 12.3, time.time())


def publish(sink: RedisSink, source: str, seqs: range, events: dict[int, str] | None = None) -> None:
    """Results for seqs in order; events[seq] = type puts an event right after that frame."""
    for seq in seqs:
        sink.write_result(frame_result(source, seq))
        if events and seq in events:
            sink.write_event(SourceEvent(source, events[seq], seq, time.time(), {"gap_s": 1.5}))


def run_summary(frames: dict[str, int]) -> RunSummary:
    ledgers = {}
    for source, n in frames.items():
        failed = sum(1 for seq in range(n) if seq % 7 == 6)
        ledgers[source] = SourceLedger(decoded=n, ok=n - failed, failed={"deadline": failed} if failed else {})
    return RunSummary(sources=ledgers, elapsed_s=1.0, latency_p50_ms=12.0, latency_p99_ms=20.0)


# ---- what the Redis sink tests share -----------------------------------------------------

KEY = "vidpipe:results:"


def config(url: str, spool_dir: Path, **overrides) -> RedisConfig:
    """A RedisSink config for tests: a long drain unless overridden."""
    return RedisConfig(url=url, spool_dir=spool_dir, **{"drain_timeout_s": 15.0, **overrides})


def stream(server: RedisServer, source: str) -> list[tuple[str, dict[str, str]]]:
    with server.client() as client:
        return client.xrange(KEY + source)


def frame_seqs(entries: list[tuple[str, dict[str, str]]]) -> list[int]:
    return [int(fields["seq"]) for _, fields in entries if fields["type"] == "frame"]


def assert_ids_increase(entries: list[tuple[str, dict[str, str]]]) -> None:
    ids = [tuple(map(int, entry_id.split("-"))) for entry_id, _ in entries]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def spool_files(spool_dir: Path) -> list[Path]:
    return sorted(spool_dir.glob("*")) if spool_dir.exists() else []


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def finish(sink: RedisSink, frames: dict[str, int]) -> RunSummary:
    """End a run as the pipeline does: its summary (`frames` decoded per source, all ok) to the
    sink, then close it (which drains or spools). The summary, with the sink's report in it."""
    summary = run_summary(frames)
    sink.write_summary(summary)
    sink.close()
    return summary


def paused_after(server: RedisServer, spool_dir: Path, written: int = 50) -> RedisSink:
    """A sink spooling to `spool_dir` that has written cam1's seqs 0..written-1 to `server`,
    which now hangs (SIGSTOP): what it is given next spools."""
    sink = RedisSink(config(server.url, spool_dir), "run-a")
    publish(sink, "cam1", range(written))
    wait_for(lambda: len(stream(server, "cam1")) == written)
    server.pause()
    return sink


def fill_disk(directory: Path) -> None:
    """Write a file in `directory` until its filesystem has no byte left (ENOSPC)."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for chunk in (b"\0" * 4096, b"\0"):  # big writes, then single bytes for the last of it
            try:
                while True:
                    os.write(fd, chunk)
            except OSError as err:
                assert err.errno == errno.ENOSPC, err
    finally:
        os.close(fd)
