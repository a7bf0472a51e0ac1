"""The MQTT sink against a real Mosquitto, stopped and restarted in the middle of a run."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from pipeline.api import run
from pipeline.config import build_config
from tests.cli_run import read_jsonl, start, vidpipe
from tests.mqtt_broker import Collector, Mosquitto
from tests.stages.test_analytics import ANALYTICS


def key(record: dict) -> str:
    return json.dumps(record, sort_keys=True)


def run_with_outage(tmp_path: Path, spool: int) -> tuple[list[dict], list[dict], dict, Collector]:
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    collector = Collector(broker.port)
    out = tmp_path / "out.jsonl"
    config = build_config({
        "outputs": {"jsonl": str(out), "mqtt": {"url": broker.url, "spool": spool, "drain_timeout_s": 15}},
        "analytics": ANALYTICS, "realtime": True, "progress": False,
    })  # fmt: skip
    done: dict = {}
    runner = threading.Thread(target=lambda: done.update(summary=run(config)))
    try:
        runner.start()
        time.sleep(2.0)  # the 8 s clip plays in real time: events come before, during and after the outage
        broker.stop()
        time.sleep(2.5)
        broker.start()
        runner.join(60)
        assert not runner.is_alive()
        records = [json.loads(line) for line in out.read_text().splitlines()]
        events = [r for r in records if r["type"] not in ("frame", "summary")]
        report = done["summary"].outputs["mqtt"]
        deadline = time.monotonic() + 15
        while len(collector.events()) < len(events) - report["events_dropped"] and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # a late duplicate would show up now
        return events, collector.events(), report, collector
    finally:
        collector.close()
        broker.stop()


def test_every_event_arrives_once_across_a_broker_restart(tmp_path: Path) -> None:
    events, received, report, collector = run_with_outage(tmp_path, spool=10_000)
    assert report["events_dropped"] == 0
    assert len(events) > 20
    assert Counter(map(key, received)) == Counter(map(key, events))  # each exactly once
    assert report["events_published"] == len(events)
    counts = [json.loads(p) for t, p, _ in collector.messages if t == "vidpipe/sample/counts"]
    assert counts and counts[-1]["lines"]["middle"]["in"] >= 1
    availability = [p for t, p, _ in collector.messages if t == "vidpipe/availability"]
    assert availability[-1] == b"offline" and b"online" in availability


def test_a_full_spool_drops_and_counts(tmp_path: Path) -> None:
    events, received, report, _ = run_with_outage(tmp_path, spool=2)
    assert report["events_dropped"] > 0 and "not delivered" in report["error"]
    got = Counter(map(key, received))
    assert max(got.values()) == 1
    assert set(got) <= set(map(key, events))
    assert len(got) + report["events_dropped"] == len(events)


def test_an_unreachable_broker_is_one_line_and_exit_2(tmp_path: Path) -> None:
    from tests.redis_server import free_port

    url = f"mqtt://user:secret@127.0.0.1:{free_port()}"
    proc = vidpipe("run", "--track", "--max-frames", "5", "--mqtt", url, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "cannot connect" in proc.stderr and "secret" not in proc.stderr


def _wait_for(path: Path, text: str, proc: subprocess.Popen[str], limit_s: float = 120) -> None:
    deadline = time.monotonic() + limit_s
    while not (path.exists() and text in path.read_text()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"no {text!r} in {path} after {limit_s} s"
        time.sleep(0.05)


def test_a_signal_ends_the_wait_for_a_dead_broker_at_once(tmp_path: Path) -> None:
    """The broker dies mid-run; the end of the run waits for it (drain_timeout_s at its bound, an
    hour) until one SIGTERM, which ends the wait: exit 143, every frame's record written."""
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    config, out = tmp_path / "c.yaml", tmp_path / "out.jsonl"
    config.write_text(f"outputs:\n  mqtt:\n    url: {broker.url}\n    drain_timeout_s: 3600\n")
    proc = start("run", "--quiet", "--config", str(config), "--track", "--realtime", "--max-frames", "60",
                 "--out", str(out))  # fmt: skip
    try:
        _wait_for(out, '"type":"frame"', proc)
        broker.stop()  # source_end, at least, can no longer be delivered
        _wait_for(out, '"type":"summary"', proc)  # the JSONL sink's summary comes before MQTT's wait
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, stderr
    assert "events not delivered (a signal ended the wait for the broker)" in stderr
    assert "stopped at once" not in stderr
    records = read_jsonl(out)
    assert [r["seq"] for r in records if r["type"] == "frame"] == list(range(60))


@pytest.mark.parametrize("url", ["mqtt://u:S3c#ret@h", "mqtts://u:S3cret@h:notaport", "mqtt://u:S3cret@h:99999",
                                 "mqtt://u:S3cret@h:0", "mqtt://S3cret@", "mqtt://u:S3cret@h/topic",
                                 "http://u:S3cret@h", "mqtt://u:S3c/ret@h", "mqtt://u:S3c?ret@h"])  # fmt: skip
def test_a_malformed_url_is_one_line_and_exit_2_without_its_password(url: str) -> None:
    proc = vidpipe("run", "--quiet", "--mqtt", url, timeout=60)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr.startswith("vidpipe: error: flags: outputs.mqtt.url = ") and proc.stderr.count("\n") == 1
    assert "S3c" not in proc.stderr and "ret@" not in proc.stderr, proc.stderr


def test_a_percent_encoded_password_logs_in(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker", password=("cam", "pa#ss/@x"))
    broker.start()
    try:
        proc = vidpipe("run", "--quiet", "--track", "--max-frames", "5", "--mqtt",
                       f"mqtt://cam:pa%23ss%2F%40x@127.0.0.1:{broker.port}", timeout=120)  # fmt: skip
    finally:
        broker.stop()
    assert proc.returncode == 0, proc.stderr
    assert "pa#ss" not in proc.stderr + proc.stdout and "refused" not in proc.stderr


@pytest.mark.parametrize("login", ["cam:Wr0ng@", "", "intruder:S3cret@"],
                         ids=["wrong password", "none", "unknown user"])
def test_a_refused_mqtt_login_is_one_line_and_exit_2_at_start(tmp_path: Path, login: str) -> None:
    broker = Mosquitto(tmp_path / "broker", password=("cam", "S3cret"))
    broker.start()
    out = tmp_path / "out.jsonl"
    try:
        proc = vidpipe("run", "--quiet", "--track", "--max-frames", "5", "--out", str(out), "--mqtt",
                       f"mqtt://{login}127.0.0.1:{broker.port}", timeout=120)  # fmt: skip
    finally:
        broker.stop()
    assert (proc.returncode, proc.stdout) == (2, ""), proc.stderr
    assert proc.stderr.startswith("vidpipe: error: mqtt: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "refused the login" in proc.stderr and "Wr0ng" not in proc.stderr and "S3cret" not in proc.stderr
    assert not out.exists()  # refused before any frame
