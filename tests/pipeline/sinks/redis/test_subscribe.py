"""Subscribers against real redis-server processes: groups, dead consumers, gaps, errors, the CLI."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from engines.errors import OutputError
from pipeline.cli.subscribe import add_subscribe_parser, format_line, run_subscribe
from pipeline.config import RedisConfig
from pipeline.sinks.redis.sink import RedisSink
from pipeline.sinks.redis.subscriber import Delivery, live, subscribe
from stages.types import Result, Status
from tests.cli_run import start
from tests.redis_server import publish, run_summary

REPO = Path(__file__).resolve().parents[4]


def sink_for(url: str, tmp_path: Path, **options) -> RedisSink:
    return RedisSink(RedisConfig(url=url, spool_dir=tmp_path / "spool", **options), "run-a")


def collect(deliveries, until, stop: threading.Event | None = None, timeout: float = 15.0) -> list[Delivery]:
    """Deliveries until until(delivery) is true; with stop, set it and let the generator end
    (which acknowledges the last one), else leave it suspended for more."""
    got = []
    deadline = time.monotonic() + timeout
    for delivery in deliveries:
        got.append(delivery)
        if until(delivery):
            if stop is None:
                return got
            stop.set()
        assert time.monotonic() < deadline, f"timed out after {len(got)} deliveries"
    assert stop is not None and stop.is_set(), "subscription ended"
    return got


def wait_written(server, source: str, seq: int) -> None:
    with server.client() as client:
        def newest() -> str | None:
            return (client.xrevrange(f"vidpipe:results:{source}", count=1) or [(None, {})])[0][1].get("seq")

        wait_until(lambda: newest() == str(seq), 10, 0.01, lambda: f"seq {seq} never written")


def read_in_background(url: str, stop: threading.Event) -> tuple[threading.Thread, list[Delivery]]:
    """A subscriber reading cam1 from the start on its own thread until `stop`: the thread and
    the list it appends each delivery to."""
    got: list[Delivery] = []

    def read() -> None:
        for delivery in subscribe(url, ["cam1"], from_start=True, block_ms=100, stop=stop):
            got.append(delivery)

    reader = threading.Thread(target=read)
    reader.start()
    return reader, got


def wait_until(done, timeout_s: float, pause_s: float, why=lambda: "timed out") -> None:
    """Poll `done()` until true; fail with `why()` after `timeout_s` (a hang guard, not a timing test)."""
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, why()
        time.sleep(pause_s)


def pending(server, source: str, group: str = "vidpipe") -> int:
    with server.client() as client:
        return client.xpending(f"vidpipe:results:{source}", group)["pending"]


def test_subscriber_gets_typed_results_events_and_summary(redis_server, tmp_path):
    sink = sink_for(redis_server.url, tmp_path)
    publish(sink, "cam1", range(30), events={14: "reconnect", 29: "end"})
    sink.write_summary(run_summary({"cam1": 30}))
    sink.close()

    stop = threading.Event()
    deliveries = subscribe(redis_server.url, ["cam1"], from_start=True, block_ms=100, stop=stop)
    got = collect(deliveries, lambda d: d.kind == "summary", stop)

    assert [d.kind for d in got] == ["frame"] * 15 + ["reconnect"] + ["frame"] * 15 + ["end", "summary"]
    frames = [d for d in got if d.kind == "frame"]
    assert [d.result.seq for d in frames] == list(range(30))
    first = frames[0].result
    assert isinstance(first, Result) and first.status is Status.OK and first.source == "cam1"
    assert first.detections.labels == ("car", "person") and first.detections.xyxy.shape == (2, 4)
    assert frames[6].result.reason.value == "deadline"
    assert got[15].record["after_seq"] == 14 and got[15].record["gap_s"] == 1.5
    assert got[-1].record["sources"]["cam1"]["decoded"] == 30
    assert all(d.gap is None and d.source == "cam1" for d in got)
    assert pending(redis_server, "cam1") == 0  # all acknowledged, the last as it stopped


def test_a_pipeline_run_is_read_back_frame_by_frame(redis_server, tmp_path):
    from pipeline.api import run
    from pipeline.config import build_config

    outputs = {"redis": {"url": redis_server.url, "spool_dir": str(tmp_path / "spool")}}
    summary = run(build_config({"outputs": outputs, "progress": False}))
    (source,) = summary.sources
    frames = summary.sources[source].decoded

    stop = threading.Event()
    deliveries = subscribe(redis_server.url, [source], from_start=True, block_ms=100, stop=stop)
    got = collect(deliveries, lambda d: d.kind == "summary", stop)
    assert [d.result.seq for d in got if d.result] == list(range(frames))
    assert got[-1].record["sources"][source]["balanced"] is True
    # The report is settled before any sink writes the summary: it counts all but the summary entry.
    assert summary.outputs["redis"]["drained"] and summary.outputs["redis"]["written"] == len(got) - 1


def test_a_new_group_without_from_start_sees_only_new_entries(redis_server, tmp_path):
    sink = sink_for(redis_server.url, tmp_path)
    publish(sink, "cam1", range(10))
    sink.close()
    deliveries = subscribe(redis_server.url, ["cam1"], group="late", block_ms=100)
    sink = sink_for(redis_server.url, tmp_path)
    publish(sink, "cam1", range(5))
    sink.close()
    got = collect(deliveries, lambda d: d.result.seq == 4)
    deliveries.close()
    assert [d.result.seq for d in got] == list(range(5))
    assert {d.gap for d in got} == {None}


DOOMED = """
import sys, time
from pipeline.sinks.redis.subscriber import subscribe
deliveries = subscribe(sys.argv[1], ["cam1"], group="workers", consumer="doomed", block_ms=100)
print("ready", flush=True)
for d in deliveries:
    print(d.result.seq, flush=True)
    time.sleep(3600 if d.result.seq >= int(sys.argv[2]) else 0.01)
"""


def start_survivor(url: str, seen: list[int], stop: threading.Event) -> threading.Thread:
    """Consumer `survivor` of group `workers` on cam1, reclaiming entries idle for 1 s, in a
    thread that appends each seq it handles to `seen` until `stop` is set."""

    def handle() -> None:
        for d in subscribe(url, ["cam1"], group="workers", consumer="survivor",
                           reclaim_idle_ms=1000, block_ms=100, stop=stop):
            seen.append(d.result.seq)
            time.sleep(0.002)

    thread = threading.Thread(target=handle)
    thread.start()
    return thread


def wait_handled(seqs: set[int], by_doomed: list[int], by_survivor: list[int]) -> None:
    def unhandled() -> list[int]:
        return sorted(seqs - set(by_doomed) - set(by_survivor))

    wait_until(lambda: not unhandled(), 20, 0.05, lambda: f"never handled: {unhandled()[:10]}")


def test_two_consumers_split_the_work_and_a_killed_ones_entries_are_reclaimed(redis_server, tmp_path):
    half = 300
    doomed = subprocess.Popen([sys.executable, "-c", DOOMED, redis_server.url, str(half)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    assert doomed.stdout.readline() == "ready\n"
    by_doomed: list[int] = []
    reader = threading.Thread(target=lambda: by_doomed.extend(int(line) for line in doomed.stdout))
    reader.start()
    by_survivor: list[int] = []
    sink = sink_for(redis_server.url, tmp_path)
    stop = threading.Event()
    thread = start_survivor(redis_server.url, by_survivor, stop)
    try:
        for seq in range(half):  # both consumers read: the group splits the entries
            publish(sink, "cam1", range(seq, seq + 1))
            time.sleep(0.003)
        wait_handled(set(range(half)), by_doomed, by_survivor)
        stop.set()
        thread.join()
        assert by_doomed and by_survivor and not set(by_doomed) & set(by_survivor)

        publish(sink, "cam1", range(half, 2 * half))  # the doomed one alone: it takes them and hangs
        deadline = time.monotonic() + 10
        while not by_doomed or by_doomed[-1] < half:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        doomed.kill()
        doomed.wait()
        with redis_server.client() as client:
            consumers = client.xinfo_consumers("vidpipe:results:cam1", "workers")
        assert {c["name"]: c["pending"] for c in consumers}["doomed"] > 0

        stop = threading.Event()
        thread = start_survivor(redis_server.url, by_survivor, stop)
        wait_handled(set(range(2 * half)), by_doomed, by_survivor)
        deadline = time.monotonic() + 5
        while pending(redis_server, "cam1", "workers"):
            assert time.monotonic() < deadline, "entries left unacknowledged"
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join()
        doomed.kill()
        reader.join()
        sink.close()
    assert by_doomed[-1] in by_survivor  # the entry it died on was handled by the other


def test_a_subscriber_rides_out_a_redis_restart(make_redis_server, tmp_path):
    server = make_redis_server(aof=True)
    stop = threading.Event()
    reader, got = read_in_background(server.url, stop)

    def seqs() -> list[int]:
        return [d.result.seq for d in list(got)]

    sink = sink_for(server.url, tmp_path)
    try:
        publish(sink, "cam1", range(200))
        wait_until(lambda: len(got) >= 100, 10, 0.01)
        server.stop()
        publish(sink, "cam1", range(200, 300))
        time.sleep(0.5)
        server.start()
        publish(sink, "cam1", range(300, 400))
        wait_until(lambda: set(seqs()) == set(range(400)), 20, 0.05,
                   lambda: f"missing {sorted(set(range(400)) - set(seqs()))[:10]}")
    finally:
        stop.set()
        reader.join()
        sink.close()
    first_seen = list(dict.fromkeys(seqs()))
    assert first_seen == list(range(400))  # in order; a repeat only after a lost acknowledgement


def test_gaps_from_trimming_are_surfaced(redis_server, tmp_path):
    deliveries = subscribe(redis_server.url, ["cam1"], block_ms=100)  # creates the group, at the end
    sink = sink_for(redis_server.url, tmp_path, maxlen=100)
    try:
        publish(sink, "cam1", range(1000))  # nobody reads: MAXLEN ~ 100 trims the head
        wait_written(redis_server, "cam1", 999)
        got = collect(deliveries, lambda d: d.result.seq == 999)
        first = got[0].result.seq
        assert first > 500 and got[0].gap == (0, first - 1)
        assert [d.result.seq for d in got] == list(range(first, 1000))
        assert {d.gap for d in got[1:]} == {None}

        publish(sink, "cam1", range(1000, 2000))  # the reader is away again, same run
        wait_written(redis_server, "cam1", 1999)
        got = collect(deliveries, lambda d: d.result.seq == 1999)
        assert got[0].result.seq > 1500 and got[0].gap == (1000, got[0].result.seq - 1)
    finally:
        sink.close()
        deliveries.close()


def test_live_pubsub_carries_records_while_connected(redis_server, tmp_path):
    stop = threading.Event()
    records = live(redis_server.url, ["cam1"], stop=stop)
    sink = sink_for(redis_server.url, tmp_path, pubsub=True)
    publish(sink, "cam1", range(50))
    sink.close()
    got = []
    for record in records:
        got.append(record)
        if len(got) == 50:
            stop.set()
    assert [r["seq"] for r in got] == list(range(50))


@pytest.mark.parametrize("problem", ["not running", "wrong password", "bad url"])
def test_connection_problems_are_one_clear_line_and_exit_2(make_redis_server, problem, capsys):
    server = make_redis_server(password="sesame", start=problem != "not running")
    url = {
        "not running": server.url,
        "wrong password": server.url.replace("sesame", "wrong"),
        "bad url": "http://:sesame@127.0.0.1:1",
    }[problem]
    expected = {"not running": "cannot connect", "wrong password": "authentication failed",
                "bad url": "not valid"}[problem]

    with pytest.raises(OutputError, match=expected) as err:
        subscribe(url, ["cam1"])
    assert "127.0.0.1" in str(err.value) and "sesame" not in str(err.value) and "wrong" not in str(err.value)

    assert run_subscribe(parse(["--redis", url, "--source", "cam1"])) == 2
    out, errors = capsys.readouterr()
    assert out == "" and errors.count("\n") == 1 and expected in errors and "Traceback" not in errors


def test_the_url_defaults_to_redis_url(monkeypatch, capsys):
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert run_subscribe(parse(["--source", "cam1"])) == 2
    assert "set REDIS_URL" in capsys.readouterr().err


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_subscribe_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["subscribe", *argv])


@pytest.mark.parametrize("as_json", [False, True])
def test_vidpipe_subscribe_prints_live_and_stops_on_ctrl_c(redis_server, tmp_path, as_json):
    sink = sink_for(redis_server.url, tmp_path)
    publish(sink, "cam1", range(7), events={6: "end"})
    sink.write_summary(run_summary({"cam1": 7}))
    sink.close()
    cmd = ["subscribe", "--source", "cam1", "--from-start"]
    cli = start(*cmd, *(["--json"] if as_json else []), cwd=REPO, env={**os.environ, "REDIS_URL": redis_server.url})
    lines = [cli.stdout.readline().rstrip("\n") for _ in range(9)]
    cli.send_signal(signal.SIGINT)
    rest, errors = cli.communicate(timeout=10)

    assert cli.returncode == 0 and errors == "" and rest == ""
    if as_json:
        records = [json.loads(line) for line in lines]
        assert [r["type"] for r in records] == ["frame"] * 7 + ["end", "summary"]
        assert records[0]["seq"] == 0 and records[0]["detections"][0]["label"] == "car"
        assert records[0]["source"] == "cam1" and records[0]["gap"] is None and "entry_id" in records[0]
    else:
        assert lines[0] == "cam1 #0 ok 2 det: car 0.91, person 0.80 (12.3 ms)"
        assert lines[6] == "cam1 #6 failed deadline after 2 attempts (2001.5 ms)"
        assert lines[7] == 'cam1 end after #6 {"gap_s":1.5}'
        assert lines[8] == "cam1 summary: 7 frames, 6 ok, 1 failed (balanced)"


def test_own_pending_entries_trimmed_while_away_are_reported_as_a_gap(redis_server, tmp_path):
    """It read #0-#22 and died before handling them; the stream was trimmed; it came back."""
    key = "vidpipe:results:cam1"
    sink = sink_for(redis_server.url, tmp_path)
    with redis_server.client() as client:
        client.xgroup_create(key, "vidpipe", id="0", mkstream=True)
        publish(sink, "cam1", range(40))
        wait_written(redis_server, "cam1", 39)
        client.xreadgroup("vidpipe", "cam-reader", {key: ">"}, count=23)  # read, never acknowledged
        ids = [entry_id for entry_id, _ in client.xrange(key)]
        client.xtrim(key, minid=ids[17], approximate=False)  # #0-#16 trimmed, #17-#22 still pending and present
    sink.close()

    stop = threading.Event()
    got = collect(subscribe(redis_server.url, ["cam1"], consumer="cam-reader", block_ms=100, stop=stop),
                  lambda d: d.result is not None and d.result.seq == 39, stop)
    assert got[0].kind == "gap" and got[0].gap == (0, 16) and got[0].gap_cause == "trimmed_pending"
    assert got[0].record == {"type": "gap", "source": "cam1", "first": 0, "last": 16, "cause": "trimmed_pending"}
    assert [d.result.seq for d in got[1:]] == list(range(17, 40))
    assert {d.gap for d in got[1:]} == {None}
    assert pending(redis_server, "cam1") == 0

    assert format_line(got[0]) == "cam1 gap: #0-#16 missing (read but not handled before they were trimmed)"


def test_a_redis_that_lost_its_data_is_not_blamed_on_trimming(make_redis_server, tmp_path):
    """redis-server restarted without persistence mid-run: the subscriber says "lost"."""
    server = make_redis_server()
    stop = threading.Event()
    reader, got = read_in_background(server.url, stop)
    sink = sink_for(server.url, tmp_path)
    try:
        publish(sink, "cam1", range(100))
        wait_until(lambda: len(got) >= 100, 10, 0.01)
        server.stop()
        publish(sink, "cam1", range(100, 150))  # spooled, then written to the emptied Redis
        server.start()
        publish(sink, "cam1", range(150, 200))
        summary = run_summary({"cam1": 200})
        sink.write_summary(summary)
        wait_until(lambda: got and got[-1].kind == "summary", 20, 0.05)
    finally:
        stop.set()
        reader.join()
        sink.close()
    frames = [d.result.seq for d in got if d.result is not None]
    assert frames == list(range(200))
    assert all(d.gap_cause != "trimmed" for d in got)
    # The run says so too: the 100 entries it had written were gone from Redis.
    assert [d.record["lost"] for d in got if d.kind == "redis_data_lost"] == [100]
    assert summary.outputs["redis"]["lost"] == 100
    assert "Redis lost 100 results" in summary.error and "appendonly" in summary.error
