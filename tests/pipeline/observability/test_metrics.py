"""Prometheus metrics, /healthz and /readyz, scraped over HTTP from real runs."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import pipeline.runtime.assemble
from engines.errors import OutputError
from pipeline.api import run
from pipeline.config import build_config
from pipeline.observability.metrics import RunMetrics
from pipeline.observability.metrics_server import MAX_CONNECTIONS, MetricsServer
from pipeline.runtime.pipeline import RunHooks
from pipeline.summary import RunSummary
from stages.types import Result
from tests.cli_run import vidpipe, vidpipe_run
from tests.redis_server import RedisServer, free_port

FAMILIES = {
    "vidpipe_frames_in", "vidpipe_frames_out", "vidpipe_queue_depth", "vidpipe_queue_capacity",
    "vidpipe_stage_latency_seconds", "vidpipe_end_to_end_latency_seconds", "vidpipe_inference_batch_size",
    "vidpipe_inference_batches", "vidpipe_inference_retries", "vidpipe_inference_errors",
    "vidpipe_context_rebuilds", "vidpipe_context_rebuild_seconds", "vidpipe_contexts_abandoned",
    "vidpipe_contexts_abandoned_live", "vidpipe_contexts_healthy", "vidpipe_deadline_misses",
    "vidpipe_source_reconnects", "vidpipe_source_events", "vidpipe_redis_spool_bytes", "vidpipe_ready",
    "vidpipe_model_loaded",
}  # fmt: skip


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def parse(scraped: tuple[int, str]) -> dict[str, Any]:
    """{family name: family} of one /metrics answer."""
    status, text = scraped
    assert status == 200, text
    return {family.name: family for family in text_string_to_metric_families(text)}


def in_hook(seen: dict[str, Any], key: str, port: int, path: str) -> None:
    """get() from a pipeline hook: an exception there would stop the publisher, so keep it for later."""
    try:
        seen[key] = get(port, path)
    except Exception as err:  # noqa: BLE001 - reported by the test after the run
        seen[key] = err


def value(families: dict[str, Any], sample: str, **labels: str) -> float:
    """The sum of a sample's values over the series matching `labels`."""
    name = sample.removesuffix("_total").removesuffix("_count").removesuffix("_sum").removesuffix("_bucket")
    found = [s.value for s in families[name].samples
             if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())]  # fmt: skip
    assert found, f"no sample {sample}{labels}"
    return sum(found)


class ScrapeAtEnd:
    """A sink that scrapes /metrics once the run is over and before the server closes."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.families: dict[str, Any] = {}

    def write_result(self, result: Result) -> None: ...

    def write_event(self, event: Any) -> None: ...

    def write_summary(self, summary: RunSummary) -> None:
        self.families = parse(get(self.port, "/metrics"))

    def close(self) -> None: ...


def test_metrics_during_a_real_run_match_the_jsonl(tmp_path: Path, car_clip: Path, redis_server: RedisServer) -> None:
    port = free_port()
    out = tmp_path / "results.jsonl"
    config = build_config({
        "sources": [{"url": str(car_clip), "name": "cars"}],
        "faults": {"error_rate": 0.1, "seed": 5},
        "deadline_ms": 60_000,
        "outputs": {"jsonl": str(out), "redis": {"url": redis_server.url, "spool_dir": str(tmp_path / "spool")}},
        "metrics": {"port": port},
        "progress": False,
    })  # fmt: skip
    during: dict[str, Any] = {}

    def look_during_the_run(result: Result) -> None:
        if result.seq == 10:
            for path in ("/metrics", "/healthz", "/readyz"):
                in_hook(during, path, port, path)

    at_end = ScrapeAtEnd(port)
    summary = run(config, sinks=[at_end], hooks=RunHooks(on_result=look_during_the_run))

    families = parse(during["/metrics"])
    assert FAMILIES <= set(families)
    assert during["/healthz"][0] == 200
    assert during["/readyz"][0] == 200 and json.loads(during["/readyz"][1])["ready"] is True
    depths = {s.labels["stage"] for s in families["vidpipe_queue_depth"].samples}
    assert depths == {"preprocess", "infer", "postprocess", "publish"}

    records = [json.loads(line) for line in out.read_text().splitlines()]
    frames = [r for r in records if r["type"] == "frame"]
    outcomes = Counter((r["status"], r["reason"] or "") for r in frames)
    assert outcomes[("failed", "inference")] + outcomes[("failed", "deadline")] < len(frames)
    m = at_end.families
    assert value(m, "vidpipe_frames_in_total", source="cars") == len(frames) == 377
    for (status, reason), n in outcomes.items():
        assert value(m, "vidpipe_frames_out_total", source="cars", status=status, reason=reason) == n
    assert value(m, "vidpipe_frames_out_total", source="cars") == len(frames)
    assert value(m, "vidpipe_end_to_end_latency_seconds_count", source="cars") == outcomes[("ok", "")]
    inferred = sum(1 for r in frames if "infer" in r["timings"])
    assert value(m, "vidpipe_stage_latency_seconds_count", stage="infer") == inferred
    inference = summary.inference
    assert inference["rebuilds"] > 0 and inference["retries"] > 0
    assert value(m, "vidpipe_context_rebuilds_total") == inference["rebuilds"]
    assert value(m, "vidpipe_context_rebuild_seconds_count") == inference["rebuilds"]
    assert value(m, "vidpipe_inference_retries_total") == inference["retries"]
    assert value(m, "vidpipe_deadline_misses_total") == inference["deadline_misses"]
    assert value(m, "vidpipe_inference_batches_total") == inference["batches"]
    assert value(m, "vidpipe_inference_batch_size_count") == inference["batches"]
    assert value(m, "vidpipe_inference_batch_size_sum") == inferred
    assert value(m, "vidpipe_source_events_total", source="cars", type="source_end") == 1
    assert value(m, "vidpipe_redis_spool_bytes") == 0
    assert records[-1]["type"] == "summary" and records[-1]["outputs"]["metrics"]["url"].endswith(f":{port}/metrics")

    with pytest.raises(urllib.error.URLError):  # the server closes with the run
        get(port, "/healthz")


def test_readyz_is_false_before_the_model_loads_and_true_after(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Port 0 and the port the server logs: a free port picked beforehand can be taken by then.
    seen: dict[str, Any] = {}
    load_model = pipeline.runtime.assemble.load_model

    def served_port() -> int:
        said = next(r for r in caplog.records if r.getMessage().startswith("serving metrics on port"))
        return int(said.getMessage().split()[4])

    def observed_load_model(*args: Any, **kwargs: Any) -> Any:
        seen["port"] = served_port()
        seen["before"] = get(seen["port"], "/readyz")
        seen["healthz"] = get(seen["port"], "/healthz")
        return load_model(*args, **kwargs)

    def after(result: Result) -> None:
        if result.seq == 0:
            in_hook(seen, "after", seen["port"], "/readyz")

    monkeypatch.setattr(pipeline.runtime.assemble, "load_model", observed_load_model)
    caplog.set_level("WARNING", logger="vidpipe")
    run(build_config({"metrics": {"port": 0}, "max_frames": 20, "progress": False}), hooks=RunHooks(on_result=after))

    assert seen["healthz"][0] == 200
    status, body = seen["before"]
    assert status == 503
    assert json.loads(body) == {"ready": False, "model_loaded": False, "healthy_contexts": 0,
                                "sources": {"sample": "connected"}}  # fmt: skip
    status, body = seen["after"]
    body = json.loads(body)
    assert status == 200
    assert body["ready"] is True and body["model_loaded"] is True and body["healthy_contexts"] >= 1


def test_a_port_in_use_is_a_user_error() -> None:
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        port = busy.getsockname()[1]

        with pytest.raises(OutputError, match=f"metrics port {port}: cannot listen"):
            run(build_config({"metrics": {"port": port}, "progress": False}))


def test_cli_port_0_and_json_logs(tmp_path: Path) -> None:
    proc = vidpipe(
        "--log-level", "INFO", "run", "--quiet", "--max-frames", "20", "--metrics-port", "0",
        "--log-format", "json", "--out", str(tmp_path / "r.jsonl"),
    )  # fmt: skip

    assert proc.returncode == 0, proc.stderr
    logs = [json.loads(line) for line in proc.stderr.splitlines()]
    assert logs and all({"time", "level", "logger", "message"} <= set(entry) for entry in logs)
    serving = [entry["message"] for entry in logs if entry["logger"] == "vidpipe.metrics"]
    assert len(serving) == 1 and "serving metrics on port" in serving[0]


def _connect(host: str, port: int) -> socket.socket:
    return socket.create_connection((host, port), timeout=5)


def test_metrics_listen_on_loopback_unless_opened() -> None:
    # 127.0.0.2 is this machine too, but not the address 127.0.0.1: a server bound to
    # 127.0.0.1 alone refuses it, one bound to every interface (0.0.0.0) accepts it.
    with MetricsServer(RunMetrics(["a"]), 0) as server:
        assert get(server.port, "/healthz")[0] == 200
        with pytest.raises(ConnectionRefusedError):
            _connect("127.0.0.2", server.port)
    with MetricsServer(RunMetrics(["a"]), 0, host="0.0.0.0") as server:
        _connect("127.0.0.2", server.port).close()


def test_cli_metrics_host_flag_and_default(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    for flags, host in (([], "127.0.0.1"), (["--metrics-host", "0.0.0.0"], "0.0.0.0")):
        proc = vidpipe_run("--max-frames", "2", "--metrics-port", "0", *flags, "--out", str(out))
        assert proc.returncode == 0, proc.stderr
        summary = json.loads(out.read_text().splitlines()[-1])
        assert summary["outputs"]["metrics"]["url"].startswith(f"http://{host}:")
    proc = vidpipe("run", "--metrics-port", "0", "--metrics-host", "a b", timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "metrics.host" in proc.stderr


def test_idle_and_slow_connections_are_cut_and_capped() -> None:
    metrics = RunMetrics(["a"])
    threads_before = threading.active_count()
    with MetricsServer(metrics, 0, request_timeout_s=3.0) as server:
        idle = [_connect("127.0.0.1", server.port) for _ in range(MAX_CONNECTIONS)]
        time.sleep(0.5)  # the server has taken them all in
        # Past the cap: answered 503 at once, no thread, no waiting.
        extra = _connect("127.0.0.1", server.port)
        assert extra.recv(1024).startswith(b"HTTP/1.0 503")
        extra.close()
        assert threading.active_count() <= threads_before + 1 + 2 * MAX_CONNECTIONS
        # A client trickling a byte at a time is cut after the request timeout as a whole.
        idle[0].sendall(b"GET /metrics HTTP/1.0\r\n")
        trickle_started = time.monotonic()
        with pytest.raises(OSError):
            for _ in range(200):
                idle[0].sendall(b"X")
                time.sleep(0.1)
        assert time.monotonic() - trickle_started < 10.0
        # Idle ones are closed by the server (EOF), which frees their slots for real scrapes.
        for sock in idle[1:]:
            sock.settimeout(10)
            assert sock.recv(1024) == b""
            sock.close()
        idle[0].close()
        assert get(server.port, "/healthz")[0] == 200


def test_a_cut_connection_is_one_debug_line_not_a_traceback(caplog: pytest.LogCaptureFixture,
                                                            capfd: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """Slow clients cut past the request timeout, and clients that leave before the answer,
    are expected: each is one DEBUG line, nothing above DEBUG, nothing printed to stderr."""
    caplog.set_level(logging.DEBUG, logger="vidpipe.metrics")
    with MetricsServer(RunMetrics(["a"]), free_port(), request_timeout_s=1.0) as server:
        slow = [_connect("127.0.0.1", server.port) for _ in range(4)]
        for sock in slow:
            sock.sendall(b"GET /metrics HTTP/1.0\r\n")
        for _ in range(100):  # a header line every 0.1 s until the server cuts them
            try:
                for sock in slow:
                    sock.sendall(b"X-a: b\r\n")
            except OSError:
                break
            time.sleep(0.1)
        for sock in slow:
            sock.close()
        assert get(server.port, "/healthz")[0] == 200
    cut = [r for r in caplog.records if r.name == "vidpipe.metrics" and "cut" in r.getMessage()]
    assert cut and all(r.levelno == logging.DEBUG and r.exc_info is None for r in cut)
    assert [r.getMessage() for r in caplog.records if r.levelno > logging.INFO] == []
    assert "Traceback" not in capfd.readouterr().err  # log lines may reach stderr where logging says so
