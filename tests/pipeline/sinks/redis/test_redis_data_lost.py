"""Redis losing a run's entries (redis-server restarted without persistence) is said in every
sink's summary, not only in Redis and on stdout: pipeline.api settles the Redis sink first, and
the JSONL gets a `redis_data_lost` event right before its summary."""

from __future__ import annotations

import json

import pytest

from pipeline.api import write_summary
from pipeline.sinks.jsonl import JsonlSink
from pipeline.sinks.redis.sink import RedisSink
from tests.redis_server import config, frame_result, run_summary, stream, wait_for


def publish_both(sinks, seqs) -> None:
    for seq in seqs:
        for sink in sinks:
            sink.write_result(frame_result("cam1", seq))


@pytest.mark.parametrize("found", ["mid-run", "at the end"])
def test_results_redis_lost_are_in_the_jsonl_summary_and_events(redis_server, tmp_path, found):
    jsonl = JsonlSink(tmp_path / "r.jsonl")
    sink = RedisSink(config(redis_server.url, tmp_path / "spool"), "run-a", ["cam1"])
    publish_both([jsonl, sink], range(100))
    # Confirmed (the EXEC replies read), not only in Redis: else a batch whose reply the kill
    # cut off counts as unwritten and is re-sent, and fewer than 100 count as lost.
    assert sink._drain(15.0)
    assert len(stream(redis_server, "cam1")) == 100
    redis_server.stop()
    redis_server.start()  # no persistence: the stream is gone
    frames = 100
    if found == "mid-run":
        publish_both([jsonl, sink], range(100, 150))
        wait_for(lambda: len(stream(redis_server, "cam1")) == 51)  # a redis_data_lost entry, 100..149
        frames = 150
    summary = run_summary({"cam1": frames})
    write_summary(summary, [jsonl, sink])
    for s in (jsonl, sink):
        s.close()

    records = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [r["seq"] for r in records if r["type"] == "frame"] == list(range(frames))
    lost_event, last = records[-2], records[-1]
    assert (lost_event["type"], lost_event["source"], lost_event["lost"]) == ("redis_data_lost", "cam1", 100)
    assert lost_event["after_seq"] == frames - 1
    assert last["type"] == "summary" and last["outputs"]["redis"]["lost"] == 100
    assert "Redis lost 100 results this run had written" in last["error"]
    assert summary.error == last["error"]

    entries = stream(redis_server, "cam1")
    types = [f["type"] for _, f in entries]
    if found == "mid-run":
        assert types == ["redis_data_lost"] + ["frame"] * 50 + ["summary"]
        assert [int(f["seq"]) for _, f in entries[1:-1]] == list(range(100, 150))
    else:
        assert types == ["redis_data_lost", "summary"]
    assert json.loads(entries[0][1]["data"])["lost"] == 100
