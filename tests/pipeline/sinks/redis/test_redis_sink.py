"""RedisSink against real redis-server processes: outages, restarts, spools, replays."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engines.errors import ConfigError
from pipeline.config import build_config
from pipeline.sinks.redis import sink as redis_sink
from pipeline.sinks.redis.entries import missing_seqs, resolve_redis_url
from pipeline.sinks.redis.sink import RedisSink
from pipeline.sinks.redis.spool import Spool
from stages.redact import redact_url
from tests.redis_server import (
    KEY,
    assert_ids_increase,
    config,
    finish,
    frame_result,
    frame_seqs,
    publish,
    run_summary,
    spool_files,
    stream,
    wait_for,
)

REPO = Path(__file__).resolve().parents[4]


def test_results_events_and_summary_land_in_one_stream_per_source(redis_server, tmp_path):
    sink = RedisSink(config(redis_server.url, tmp_path / "spool"), "run-a")
    publish(sink, "cam1", range(20), events={9: "reconnect", 19: "end"})
    publish(sink, "cam2", range(5))
    summary = finish(sink, {"cam1": 20, "cam2": 5})

    entries = stream(redis_server, "cam1")
    assert [f["type"] for _, f in entries] == ["frame"] * 10 + ["reconnect"] + ["frame"] * 10 + ["end", "summary"]
    assert frame_seqs(entries) == list(range(20))
    assert_ids_increase(entries)
    first = json.loads(entries[0][1]["data"])
    assert first["source"] == "cam1" and first["status"] == "ok" and first["detections"][0]["label"] == "car"
    assert json.loads(entries[10][1]["data"])["gap_s"] == 1.5
    assert json.loads(entries[-1][1]["data"])["sources"]["cam1"]["decoded"] == 20
    assert {f["run"] for _, f in entries} == {"run-a"}
    assert [f["type"] for _, f in stream(redis_server, "cam2")][-1] == "summary"
    assert summary.outputs["redis"] == {
        "url": redis_server.url, "written": 29, "spooled": 0, "spool_path": None, "spool_bytes": 0,
        "drained": True, "duplicates": 0, "resent": 0, "earlier_runs": 0, "lost": 0, "error": None,
    }
    assert spool_files(tmp_path / "spool") == []


@pytest.mark.parametrize("buffer_max", [10_000, 32], ids=["buffered", "overflowing"])
def test_killing_redis_mid_run_loses_and_duplicates_nothing(
    make_redis_server, tmp_path, caplog, monkeypatch, buffer_max
):
    monkeypatch.setattr(redis_sink, "BUFFER_MAX", buffer_max)
    server = make_redis_server(aof=True)
    sink = RedisSink(config(server.url, tmp_path / "spool"), "run-a")
    with caplog.at_level(logging.WARNING):
        for seq in range(500):
            publish(sink, "cam1", range(seq, seq + 1), events={250: "reconnect"})
            publish(sink, "cam2", range(seq, seq + 1))
            if seq == 100:
                wait_for(lambda: len(stream(server, "cam1")) >= 50)
                server.stop()
            if seq == 300:
                time.sleep(1.0)
                server.start()
            time.sleep(0.002)
        summary = finish(sink, {"cam1": 500, "cam2": 500})

    report = summary.outputs["redis"]
    assert report["drained"] and report["spooled"] > 0 and report["spool_bytes"] == 0
    for source in ("cam1", "cam2"):
        entries = stream(server, source)
        assert frame_seqs(entries) == list(range(500))
        assert_ids_increase(entries)
        assert entries[-1][1]["type"] == "summary"
    assert [f["type"] for _, f in stream(server, "cam1")].count("reconnect") == 1
    assert "spooling results" in caplog.text and "writing again" in caplog.text
    assert spool_files(tmp_path / "spool") == []


def test_a_hung_then_killed_redis_with_a_full_buffer_keeps_order(make_redis_server, tmp_path, monkeypatch):
    """The batch in flight and the buffer are older than what overflowed into the spool
    meanwhile: when the batch fails they must go back in front of it, not behind."""
    monkeypatch.setattr(redis_sink, "BUFFER_MAX", 32)
    server = make_redis_server(aof=True)
    spool_dir = tmp_path / "spool"
    sink = RedisSink(config(server.url, spool_dir), "run-a")
    publish(sink, "cam1", range(50))
    wait_for(lambda: len(stream(server, "cam1")) == 50)
    server.pause()
    publish(sink, "cam1", range(50, 300))
    wait_for(lambda: any(p.suffix == ".jsonl" for p in spool_files(spool_dir)))
    server.stop()
    server.start()
    summary = finish(sink, {"cam1": 300})

    entries = stream(server, "cam1")
    assert frame_seqs(entries) == list(range(300))
    assert_ids_increase(entries)
    assert summary.outputs["redis"]["drained"]


def test_writer_falling_behind_spools_and_keeps_order(redis_server, tmp_path, monkeypatch):
    monkeypatch.setattr(redis_sink, "BUFFER_MAX", 32)
    sink = RedisSink(config(redis_server.url, tmp_path / "spool"), "run-a")
    publish(sink, "cam1", range(3000))
    summary = finish(sink, {"cam1": 3000})

    entries = stream(redis_server, "cam1")
    assert frame_seqs(entries) == list(range(3000))
    assert_ids_increase(entries)
    assert summary.outputs["redis"]["spooled"] > 0


def test_run_starting_with_redis_down_drains_when_it_comes_up(make_redis_server, tmp_path, caplog):
    server = make_redis_server(start=False)
    spool_dir = tmp_path / "spool"
    with caplog.at_level(logging.WARNING):
        sink = RedisSink(config(server.url, spool_dir), "run-a")
        publish(sink, "cam1", range(300))
        wait_for(lambda: any(p.suffix == ".jsonl" and p.stat().st_size > 0 for p in spool_files(spool_dir)))
        server.start()
        summary = finish(sink, {"cam1": 300})

    assert "Connection refused" in caplog.text and "spooling results" in caplog.text
    assert summary.outputs["redis"]["drained"] is True
    assert summary.outputs["redis"]["spooled"] >= 300
    assert frame_seqs(stream(server, "cam1")) == list(range(300))
    assert spool_files(spool_dir) == []


def test_drain_timeout_leaves_the_spool_and_the_next_run_replays_it_first(make_redis_server, tmp_path, caplog):
    server = make_redis_server(start=False)
    spool_dir = tmp_path / "spool"
    with caplog.at_level(logging.WARNING):
        first = RedisSink(config(server.url, spool_dir, drain_timeout_s=0.3), "run-a")
        publish(first, "cam1", range(100), events={99: "end"})
        summary_a = run_summary({"cam1": 100})
        first.write_summary(summary_a)
        first.close()

    report = summary_a.outputs["redis"]
    assert report["drained"] is False and report["written"] == 0
    assert report["spool_bytes"] > 0 and Path(report["spool_path"]).stat().st_size >= report["spool_bytes"]
    assert "Connection refused" in report["error"]
    assert "left in spool" in caplog.text and "next run" in caplog.text

    server.start()
    second = RedisSink(config(server.url, spool_dir), "run-b")
    publish(second, "cam1", range(50))
    summary_b = run_summary({"cam1": 50})
    second.write_summary(summary_b)
    second.close()

    entries = stream(server, "cam1")
    runs = [f["run"] for _, f in entries]
    assert runs == ["run-a"] * 102 + ["run-b"] * 51
    assert frame_seqs(entries) == list(range(100)) + list(range(50))
    assert_ids_increase(entries)
    assert summary_b.outputs["redis"]["earlier_runs"] == 102
    assert spool_files(spool_dir) == []


CRASHING_RUN = """
import sys, time
from pathlib import Path
from pipeline.config import RedisConfig
from pipeline.sinks.redis.sink import RedisSink
from tests.redis_server import publish
sink = RedisSink(RedisConfig(url=sys.argv[1], spool_dir=Path(sys.argv[2])), "crashed")
publish(sink, "cam1", range(300))
print("published", flush=True)
time.sleep(3600)
"""


def test_a_crashed_runs_spool_is_replayed_by_the_next_run(make_redis_server, tmp_path):
    server = make_redis_server(start=False)
    spool_dir = tmp_path / "spool"
    crashing = subprocess.Popen([sys.executable, "-c", CRASHING_RUN, server.url, str(spool_dir)],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert crashing.stdout.readline() == "published\n"
        wait_for(lambda: sum(p.read_text().count("\n") for p in spool_dir.glob("*.jsonl")) == 300)
    finally:
        crashing.kill()
        crashing.wait()

    server.start()
    sink = RedisSink(config(server.url, spool_dir), "run-b")
    summary = finish(sink, {})
    entries = stream(server, "cam1")
    assert frame_seqs(entries) == list(range(300)) and {f["run"] for _, f in entries} == {"crashed"}
    assert summary.outputs["redis"]["earlier_runs"] == 300
    assert spool_files(spool_dir) == []


def test_replaying_a_spool_that_was_already_written_duplicates_nothing(make_redis_server, tmp_path):
    """As after a lost reply or a crash between XADD and the spool's commit: the same records, twice."""
    server = make_redis_server(aof=True)
    spool_dir = tmp_path / "spool"
    first = RedisSink(config(server.url, spool_dir, drain_timeout_s=0.1), "run-a")
    publish(first, "cam1", range(100))
    wait_for(lambda: len(stream(server, "cam1")) == 100)
    server.stop()
    publish(first, "cam1", range(100, 200))
    first.write_summary(run_summary({"cam1": 200}))
    first.close()
    copy = tmp_path / "spool-copy"
    shutil.copytree(spool_dir, copy)

    server.start()
    reports = []
    for spool in (spool_dir, copy):
        sink = RedisSink(config(server.url, spool), "run-b")
        summary = finish(sink, {})
        reports.append(summary.outputs["redis"])

    assert [(r["written"], r["duplicates"]) for r in reports] == [(101, 0), (0, 101)]
    entries = stream(server, "cam1")
    assert frame_seqs(entries) == list(range(200))
    assert len(entries) == 201


def test_a_later_run_writes_after_a_stream_whose_ids_are_ahead_of_its_clock(redis_server, tmp_path):
    """Clock skew between hosts: IDs continue after the stream's last one, nothing is refused."""
    with redis_server.client() as client:
        client.xadd(KEY + "cam1", {"type": "frame"}, id=f"{int(time.time() * 1000) + 3_600_000}-5")
    sink = RedisSink(config(redis_server.url, tmp_path / "spool"), "run-a")
    publish(sink, "cam1", range(10))
    sink.close()
    assert frame_seqs(stream(redis_server, "cam1")[1:]) == list(range(10))


def test_publisher_falls_back_to_the_spool_with_a_warning(make_redis_server, tmp_path, caplog):
    server = make_redis_server(password="sesame", start=False)
    url = server.url
    with caplog.at_level(logging.WARNING):
        sink = RedisSink(config(url, tmp_path / "spool", drain_timeout_s=0.2), "run-a")
        publish(sink, "cam1", range(10))
        summary = finish(sink, {"cam1": 10})
    assert "Connection refused" in caplog.text and "spooling results" in caplog.text
    assert ":sesame@" not in caplog.text
    assert summary.outputs["redis"]["drained"] is False
    assert summary.outputs["redis"]["spooled"] == 11


def test_a_key_that_is_not_a_stream_keeps_results_spooled_and_says_why(redis_server, tmp_path, caplog):
    with redis_server.client() as client:
        client.set(KEY + "cam1", "not a stream")
    with caplog.at_level(logging.WARNING):
        sink = RedisSink(config(redis_server.url, tmp_path / "spool", drain_timeout_s=0.5), "run-a")
        publish(sink, "cam1", range(10))
        summary = finish(sink, {"cam1": 10})
    report = summary.outputs["redis"]
    assert not report["drained"] and "WRONGTYPE" in report["error"] and report["spool_bytes"] > 0
    assert caplog.text.count("WRONGTYPE") <= 3  # said once (and in the summary line), not per retry


def test_a_malformed_url_is_a_clear_error(tmp_path):
    message = r"outputs\.redis\.url = 'http://:\*\*\*@localhost:6379': must start with redis://"
    with pytest.raises(ConfigError, match=message) as caught:
        build_config({"outputs": {"redis": {"url": "http://:secret@localhost:6379"}}})
    assert "secret" not in str(caught.value)


def test_urls_are_redacted_and_default_from_redis_url(monkeypatch):
    assert redact_url("redis://:pw@h:1/0") == "redis://:***@h:1/0"
    assert redact_url("rediss://user:pw@h:1/0") == "rediss://user:***@h:1/0"
    assert redact_url("redis://h:1/0?password=pw&db=2") == "redis://h:1/0?password=***&db=2"
    monkeypatch.setenv("REDIS_URL", "redis://env:6379/1")
    assert resolve_redis_url(None) == "redis://env:6379/1"
    assert resolve_redis_url("redis://cli:6379/0") == "redis://cli:6379/0"
    monkeypatch.delenv("REDIS_URL")
    assert resolve_redis_url(None) is None


def test_ids_tell_which_seqs_are_missing():
    assert missing_seqs("7-6000", "7-7000") is None  # frame 5 then frame 6
    assert missing_seqs("7-6001", "7-7000") is None  # event after 5, frame 6
    assert missing_seqs("7-6000", "7-10000") == (6, 8)
    assert missing_seqs("7-6000", "7-10001") == (6, 9)  # an event after seq 9
    assert missing_seqs("0-0", "7-1000") is None
    assert missing_seqs("0-0", "7-951000") == (0, 949)
    assert missing_seqs("5-90000", "7-3000") == (0, 1)  # a new run that lost its head


def test_spool_replays_in_order_from_its_commit_point_and_survives_its_owner(tmp_path, caplog):
    spool = Spool.create(tmp_path, "0000000000001-run", {"run": "r"})
    spool.append(["a", "b", "c"])
    assert spool.read(2) == ["a", "b"]
    spool.rewind()  # the batch failed: read again
    assert spool.read(10) == ["a", "b", "c"]
    spool.commit()
    spool.append(["d", "e"])
    assert spool.read(1) == ["d"]
    spool.commit()
    spool.prepend(["x", "y"])  # older than what is not yet replayed
    spool.sync()
    assert Spool.leftovers(tmp_path) == []  # held by its owner
    spool.close()

    with open(spool.path, "ab") as f:
        f.write(b'{"torn')  # a crash mid-write
    (leftover,) = Spool.leftovers(tmp_path)
    assert leftover.meta == {"run": "r"}
    with caplog.at_level(logging.WARNING):
        assert leftover.read(10) == ["x", "y", "e"]
    assert "torn" in caplog.text and leftover.caught_up
    leftover.commit()
    leftover.remove()
    assert spool_files(tmp_path) == []


def test_publishing_throughput(redis_server, tmp_path, capsys):
    """Records/s from the first write until everything is in Redis (reported, not asserted)."""
    n = 10_000
    sink = RedisSink(config(redis_server.url, tmp_path / "spool"), "run-a")
    results = [frame_result(source, seq) for seq in range(n // 2) for source in ("cam1", "cam2")]
    start = time.perf_counter()
    for result in results:
        sink.write_result(result)
    calls = time.perf_counter() - start
    summary = run_summary({})
    sink.write_summary(summary)
    total = time.perf_counter() - start
    sink.close()
    assert summary.outputs["redis"]["written"] == n + 2  # and a summary per stream
    assert frame_seqs(stream(redis_server, "cam1")) == list(range(n // 2))
    with capsys.disabled():
        print(f"\nredis sink: {n / total:,.0f} records/s into Redis "
              f"({calls / n * 1e6:.1f} us per write_result on the publisher thread)")


# --- issue 17: a write counts only when it is confirmed ---
