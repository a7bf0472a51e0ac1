"""`vidpipe run --redis` end to end: a real pipeline publishing to a real redis-server that dies mid-run."""

from __future__ import annotations

import json
import threading
import time

import pytest

from pipeline.api import run
from pipeline.config import RedisConfig, build_config
from pipeline.runtime.pipeline import RunHooks
from pipeline.sinks.redis.sink import RedisSink
from tests.cli_run import vidpipe_run
from tests.pipeline.observability.test_metrics import ScrapeAtEnd, value
from tests.redis_server import free_port


def stream_records(client, key: str) -> list[dict]:
    return [json.loads(fields["data"]) for _, fields in client.xrange(key)]


def test_redis_killed_mid_run_and_restarted_loses_and_duplicates_nothing(make_redis_server, car_clip, tmp_path):
    server = make_redis_server(aof=True)
    published = threading.Event()
    count = [0]

    def on_result(result) -> None:
        count[0] += 1
        if count[0] == 100:
            published.set()

    config = build_config(
        {
            "sources": [{"url": str(car_clip), "name": "cam"}],
            "realtime": True,  # 30 s of video: time to kill and restart Redis mid-run
            "max_frames": 200,
            "outputs": {"redis": {"url": server.url, "spool_dir": str(tmp_path / "spool"), "drain_timeout_s": 20}},
        }
    )
    outcome: dict = {}
    hooks = RunHooks(on_result=on_result)
    runner = threading.Thread(target=lambda: outcome.setdefault("summary", run(config, hooks=hooks)))
    runner.start()
    assert published.wait(60)
    server.stop()
    time.sleep(1.5)
    server.start()
    runner.join(120)
    summary = outcome["summary"]
    assert summary.balanced
    redis_out = summary.outputs["redis"]
    assert redis_out["drained"] and redis_out["spooled"] > 0

    records = stream_records(server.client(), "vidpipe:results:cam")
    frames = [r for r in records if r["type"] == "frame"]
    assert [r["seq"] for r in frames] == list(range(200))
    assert [r["type"] for r in records][-2:] == ["source_end", "summary"]


def test_run_with_redis_down_spools_and_a_later_run_replays_it(make_redis_server, tmp_path):
    server = make_redis_server(start=False)
    spool = tmp_path / "spool"
    redis_config = {"url": server.url, "spool_dir": str(spool), "drain_timeout_s": 0.5}
    port = free_port()
    at_end = ScrapeAtEnd(port)  # after the Redis sink's summary: what it left in the spool
    first = run(build_config({"max_frames": 30, "outputs": {"redis": redis_config}, "metrics": {"port": port}}),
                sinks=[at_end])  # fmt: skip
    assert first.balanced and not first.outputs["redis"]["drained"]
    assert first.outputs["redis"]["spool_bytes"] > 0
    assert value(at_end.families, "vidpipe_redis_spool_bytes") > 0

    server.start()
    second = run(build_config({"max_frames": 10, "outputs": {"redis": {**redis_config, "drain_timeout_s": 20}}}))
    assert second.outputs["redis"]["drained"]
    frames = [r for r in stream_records(server.client(), "vidpipe:results:sample") if r["type"] == "frame"]
    # The first run's 30 results come first, then the second run's 10.
    assert [r["seq"] for r in frames] == list(range(30)) + list(range(10))


@pytest.mark.parametrize("problem", ["wrong password", "same source name"])
def test_run_refuses_a_redis_it_must_not_write_at_start(make_redis_server, tmp_path, problem):
    server = make_redis_server(password="sesame")
    url = server.url
    holder = None
    if problem == "wrong password":
        url = url.replace("sesame", "wrong")
    else:  # another run publishes the source "sample" right now
        holder = RedisSink(RedisConfig(url=url, spool_dir=tmp_path / "other"), "other-run", ["sample"])
    try:
        done = vidpipe_run("--max-frames", "5", "--redis", url, "--out", str(tmp_path / "out.jsonl"), cwd=tmp_path)
    finally:
        if holder:
            holder.close()
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    expected = "access denied" if problem == "wrong password" else "is being written by run other-run"
    assert expected in lines[0] and "sesame" not in done.stderr and "wrong@" not in done.stderr
    with server.client() as client:
        assert client.xlen("vidpipe:results:sample") == 0
    assert not (tmp_path / ".vidpipe-spool").exists() or not any((tmp_path / ".vidpipe-spool").glob("*.jsonl"))
