"""The Redis sink under fire: a write counts only when confirmed (late replays, two runs on one
stream, out of memory), refused logins and unwritable or full spool dirs at start, private and
configurable spool modes, and the bound on what a killed run can lose while Redis hangs."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engines.errors import OutputError
from pipeline.config import build_config
from pipeline.sinks import FileModes
from pipeline.sinks.redis import sink as redis_sink
from pipeline.sinks.redis.entries import missing_seqs
from pipeline.sinks.redis.sink import RedisSink
from tests.redis_server import (
    RedisServer,
    assert_ids_increase,
    config,
    fill_disk,
    finish,
    frame_seqs,
    paused_after,
    publish,
    run_summary,
    spool_files,
    stream,
    wait_for,
)

REPO = Path(__file__).resolve().parents[4]


def seqs_of_run(server: RedisServer, source: str, run: str) -> list[int]:
    return [int(f["seq"]) for _, f in stream(server, source) if f["type"] == "frame" and f["run"] == run]


def test_a_late_replay_after_another_run_wrote_the_stream_is_resent_not_taken_as_written(
    make_redis_server, tmp_path
):
    server = make_redis_server(aof=True)
    spool_a = tmp_path / "spool-a"
    first = RedisSink(config(server.url, spool_a, drain_timeout_s=0.1), "run-a")
    publish(first, "cam1", range(100))
    wait_for(lambda: len(stream(server, "cam1")) == 100)
    server.stop()
    publish(first, "cam1", range(100, 400))
    first.write_summary(run_summary({"cam1": 400}))
    first.close()

    server.start()
    other = RedisSink(config(server.url, tmp_path / "spool-b"), "run-b")  # another spool_dir
    publish(other, "cam1", range(50))
    other.close()

    replay = RedisSink(config(server.url, spool_a), "run-c")
    summary = run_summary({})
    replay.write_summary(summary)
    replay.close()

    assert seqs_of_run(server, "cam1", "run-a") == list(range(400))
    assert seqs_of_run(server, "cam1", "run-b") == list(range(50))
    entries = stream(server, "cam1")
    assert_ids_increase(entries)
    resent = [f for _, f in entries if f["run"] == "run-a" and "from_seq" in f]
    assert len(resent) == 301 and {f["from_seq"] for f in resent} == {"100"}
    report = summary.outputs["redis"]
    assert (report["earlier_runs"], report["resent"], report["duplicates"]) == (301, 301, 0)
    first_resent = next(i for i, (_, f) in enumerate(entries) if "from_seq" in f)
    assert entries[first_resent - 1][1]["run"] == "run-b"  # after the other run's entries...
    assert missing_seqs(entries[first_resent - 1][0], entries[first_resent][0], 100) is None  # ...no gap


def test_two_runs_on_one_source_name_conflict_at_start(redis_server, tmp_path):
    first = RedisSink(config(redis_server.url, tmp_path / "a"), "run-a", ["cam1", "cam2"])
    with pytest.raises(OutputError, match=r"stream vidpipe:results:cam2 is being written by run run-a \(pid \d+"):
        RedisSink(config(redis_server.url, tmp_path / "b"), "run-b", ["cam2"])
    publish(first, "cam2", range(10))
    first.close()
    second = RedisSink(config(redis_server.url, tmp_path / "b"), "run-b", ["cam2"])  # released
    publish(second, "cam2", range(5))
    second.close()
    assert seqs_of_run(redis_server, "cam2", "run-a") == list(range(10))
    assert seqs_of_run(redis_server, "cam2", "run-b") == list(range(5))


def test_redis_out_of_memory_mid_batch_loses_nothing(redis_server, tmp_path, caplog):
    with redis_server.client() as client:
        used = client.info("memory")["used_memory"]
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", used + 600_000)
    sink = RedisSink(config(redis_server.url, tmp_path / "spool"), "run-a")
    with caplog.at_level(logging.WARNING):
        publish(sink, "cam1", range(4000))
        wait_for(lambda: "maxmemory" in caplog.text, timeout=20)
        with redis_server.client() as client:
            client.config_set("maxmemory", 0)
        summary = finish(sink, {"cam1": 4000})
    assert frame_seqs(stream(redis_server, "cam1")) == list(range(4000))
    assert summary.outputs["redis"]["drained"] and summary.error is None


@pytest.mark.parametrize("problem", ["wrong password", "no permission"])
def test_a_refused_login_is_a_user_error_at_start(make_redis_server, tmp_path, problem):
    server = make_redis_server(password="sesame")
    if problem == "wrong password":
        url = server.url.replace("sesame", "wrong")
    else:
        with server.client() as client:
            client.acl_setuser("reader", enabled=True, passwords=["+pw"], keys=["*"], commands=["+ping", "+xrange"])
        url = f"redis://reader:pw@127.0.0.1:{server.port}/0"
    with pytest.raises(OutputError) as caught:
        RedisSink(config(url, tmp_path / "spool"), "run-a", ["cam1"])
    message = str(caught.value)
    if problem == "wrong password":
        assert "access denied for user default (invalid username-password pair" in message
        assert "give the right user and password in the URL" in message
    else:
        assert "access denied for user reader (this user has no permissions to run the 'evalsha' command" in message
        assert "allow it (ACL SETUSER reader +evalsha)" in message
    assert "sesame" not in message and ":wrong@" not in message and ":pw@" not in message


def test_a_spool_dir_that_cannot_be_written_is_refused_at_start(redis_server, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match=r"spool_dir .*file/spool: cannot write \(Not a directory\)"):
        RedisSink(config(redis_server.url, tmp_path / "file" / "spool"), "run-a")


def test_spool_files_are_private(make_redis_server, tmp_path):
    server = make_redis_server(start=False)
    spool_dir = tmp_path / "spool"
    sink = RedisSink(config(server.url, spool_dir, drain_timeout_s=0.1), "run-a")
    publish(sink, "cam1", range(10))
    sink.write_summary(run_summary({"cam1": 10}))
    sink.close()
    assert spool_dir.stat().st_mode & 0o777 == 0o700
    files = spool_files(spool_dir)
    assert {p.suffix for p in files} == {".lock", ".state", ".jsonl"}
    assert {p.stat().st_mode & 0o777 for p in files} == {0o600}


def test_spool_modes_are_configurable(make_redis_server, tmp_path):
    """outputs.file_mode / dir_mode reach every spool file and the spool dir (umask 022 here)."""
    server = make_redis_server(start=False)
    spool_dir = tmp_path / "spool"
    old_umask = os.umask(0o022)
    try:
        modes = build_config({"outputs": {"file_mode": "0o640", "dir_mode": "750"}}).outputs
        settings = config(server.url, spool_dir, drain_timeout_s=0.1)
        sink = RedisSink(settings, "run-a", modes=FileModes(modes.file_mode, modes.dir_mode))
        publish(sink, "cam1", range(10))
        sink.write_summary(run_summary({"cam1": 10}))
        sink.close()
    finally:
        os.umask(old_umask)
    assert spool_dir.stat().st_mode & 0o777 == 0o750
    files = spool_files(spool_dir)
    assert {p.suffix for p in files} == {".lock", ".state", ".jsonl"}
    assert {p.stat().st_mode & 0o777 for p in files} == {0o640}


SLOW_REDIS_RUN = """
import sys, time
from pathlib import Path
from pipeline.config import RedisConfig
from pipeline.sinks.redis.sink import RedisSink
from tests.redis_server import publish
sink = RedisSink(RedisConfig(url=sys.argv[1], spool_dir=Path(sys.argv[2])), "crashed")
publish(sink, "cam1", range(200))
print("first", flush=True)
sys.stdin.readline()
publish(sink, "cam1", range(200, 617))
print("second", flush=True)
time.sleep(3600)
"""


def test_a_run_killed_while_redis_hangs_loses_nothing_older_than_the_bound(redis_server, tmp_path):
    """Redis stopped (SIGSTOP), results keep coming, vidpipe is SIGKILLed 3 s later."""
    spool_dir = tmp_path / "spool"
    run = subprocess.Popen([sys.executable, "-c", SLOW_REDIS_RUN, redis_server.url, str(spool_dir)], cwd=REPO,
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert run.stdout.readline() == "first\n"
        wait_for(lambda: len(stream(redis_server, "cam1")) == 200)
        redis_server.pause()
        run.stdin.write("go\n")
        run.stdin.flush()
        assert run.stdout.readline() == "second\n"
        time.sleep(redis_sink.SPOOL_AFTER_S + 2.0)
    finally:
        run.kill()
        run.wait()
        redis_server.resume()

    replay = RedisSink(config(redis_server.url, spool_dir), "run-b")
    replay.write_summary(run_summary({}))
    replay.close()
    assert frame_seqs(stream(redis_server, "cam1")) == list(range(617))
    assert spool_files(spool_dir) == []


def test_a_full_spool_disk_keeps_the_writer_going_and_is_refused_at_start(redis_server, small_disk, caplog):
    spool_dir = small_disk / "spool"
    sink = paused_after(redis_server, spool_dir)
    with caplog.at_level(logging.WARNING):
        publish(sink, "cam1", range(50, 1500))  # ~900 KiB of results: more than the disk holds
        wait_for(lambda: "No space left on device" in caplog.text)
        redis_server.resume()
        summary = finish(sink, {"cam1": 1500})
    assert frame_seqs(stream(redis_server, "cam1")) == list(range(1500))
    assert summary.outputs["redis"]["drained"] and summary.error is None
    assert spool_files(spool_dir) == []

    fill_disk(small_disk)  # the disk is full now
    for attempt in range(2):  # the same line both times: no lock is left behind
        with pytest.raises(OutputError, match=r"spool_dir .*: cannot write \(No space left on device\)"):
            RedisSink(config(redis_server.url, spool_dir), f"run-{attempt}")
