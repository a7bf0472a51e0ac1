"""vidpipe over a real multi-node Ray cluster on this machine, publishing to a private
redis-server: workers killed, a node lost, an engine past its restart budget, sources added
and removed, the coordinator restarted, per-worker metrics."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from engines.faults import FaultPlan  # noqa: E402
from pipeline.cluster import NAMESPACE, client  # noqa: E402
from pipeline.cluster.streams import stream_ledger  # noqa: E402
from pipeline.config import SourceConfig, build_config  # noqa: E402
from tests.cli_run import vidpipe  # noqa: E402

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

WAIT_S = 240  # generous: the machine is small and shared
NODE = {"num_cpus": 1, "object_store_memory": 80 * 1024**2}  # each node holds one worker


@pytest.fixture(scope="module")
def ray_cluster():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(**NODE)
    cluster.wait_for_nodes()
    client.connect_ray(cluster.address)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture
def redis_db(redis_server, ray_cluster):
    yield redis_server
    try:
        client.stop_cluster()
    except Exception:
        pass


def make_config(redis_url: str, tmp_path: Path, sources: list[dict], **fields):
    return build_config({
        "sources": sources,
        "outputs": {"redis": {"url": redis_url, "spool_dir": str(tmp_path / "spool")}},
        "infer": {"contexts": 1},
        **fields,
    })


def wait_for(what, check, timeout_s: float = WAIT_S, poll_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}; last status: {client.status()}")
        time.sleep(poll_s)


def frames_in(redis_server, name: str) -> int:
    return stream_ledger(redis_server.client(), f"vidpipe:results:{name}", "0-0").frames


def running_on(worker: str):
    current = client.status()
    return [n for n, row in current["sources"].items() if row["worker"] == worker and row["state"] == "running"]


def test_a_killed_worker_moves_its_sources_and_every_seq_appears_once(redis_db, tmp_path, car_clip, person_clip):
    sources = [{"url": str(clip), "name": f"cam{i}"} for i, clip in enumerate([car_clip, person_clip] * 2)]
    config = make_config(redis_db.url, tmp_path, sources, max_frames=80, realtime=True)
    client.start_cluster(config, workers=2)
    # Load-based: four equal sources over two workers go two and two.
    current = wait_for("all four sources running", lambda: all(
        row["state"] == "running" for row in client.status()["sources"].values()) and client.status())
    holders = [row["worker"] for row in current["sources"].values()]
    assert sorted(holders.count(w) for w in set(holders)) == [2, 2]
    victim = "vidpipe-worker-0"
    victims = wait_for("frames from the victim's sources", lambda: [
        n for n in running_on(victim) if frames_in(redis_db, n) >= 5])
    os.kill(current["workers"][victim]["pid"], signal.SIGKILL)
    killed_at = time.time()

    final = client.wait_finished(timeout_s=WAIT_S)
    assert final["finished"], final
    moved = {n for n, row in final["sources"].items() if row["moves"]}
    assert set(victims) <= moved
    for name, ledger in client.ledger().items():
        assert ledger["duplicates"] == [] and ledger["missing"] == [], (name, ledger)
        assert ledger["frames"] == ledger["expected"] == 80, (name, ledger)
        assert ledger["balanced"]
    # The moved sources resumed after the last seq their stream held, within the same stream IDs.
    for name in victims:
        history = final["sources"][name]["history"]
        assert history[-1]["moved_from"] == victim and history[-1]["first_seq"] > 0
        took = history[-1]["time"] - killed_at
        print(f"failover of {name}: {took:.2f} s from SIGKILL to its start on {history[-1]['worker']}")


# Per source in the failure tests: 19-24 s of paced video, so that on a loaded machine, where the two
# workers may start seconds apart, the victim's sources are still running when the failure lands.
FRAMES = 240


def start_four_and_pick_a_victim(redis_db, tmp_path, clips, away_from: str | None = None, **fields):
    """Four paced FRAMES-frame sources over two workers; once the victim's sources have
    published: the status, the victim (a worker whose node is not `away_from`, a node id) and
    the sources it holds."""
    sources = [{"url": str(clip), "name": f"cam{i}"} for i, clip in enumerate(clips * 2)]
    config = make_config(redis_db.url, tmp_path, sources, max_frames=FRAMES, realtime=True, **fields)
    client.start_cluster(config, workers=2)

    def victim_with_frames():
        """A worker away from `away_from` whose running sources have each published 5 frames."""
        current = client.status()
        if not all(row["state"] in ("running", "done") for row in current["sources"].values()):
            return None
        for worker, info in sorted(current["workers"].items()):
            held = running_on(worker)
            if info["node"] != away_from and held and all(frames_in(redis_db, n) >= 5 for n in held):
                return current, worker, held
        return None

    return wait_for("a victim whose sources are running and publishing", victim_with_frames)


def assert_moved_and_every_seq_once(final, victim: str, victims: list[str]) -> None:
    assert final["finished"], final
    for name in victims:
        last = final["sources"][name]["history"][-1]
        assert last["moved_from"] == victim and last["worker"] != victim and last["first_seq"] > 0, (name, last)
    for name, ledger in client.ledger().items():
        assert ledger["duplicates"] == [] and ledger["missing"] == [], (name, ledger)
        assert ledger["frames"] == ledger["expected"] == FRAMES and ledger["balanced"], (name, ledger)


def test_a_lost_node_moves_its_workers_sources_and_every_seq_appears_once(
    redis_db, ray_cluster, tmp_path, car_clip, person_clip, cpu_hog
):
    ray_cluster.add_node(**NODE)  # the module's cluster keeps three nodes
    ray_cluster.wait_for_nodes()
    head = ray_cluster.head_node.node_id  # holds the coordinator (client.HEAD_NODE)
    current, victim, victims = start_four_and_pick_a_victim(redis_db, tmp_path, [car_clip, person_clip], away_from=head)
    lost = current["workers"][victim]["node"]
    ray_cluster.remove_node(next(n for n in ray_cluster.worker_nodes if n.node_id == lost))

    assert_moved_and_every_seq_once(client.wait_finished(timeout_s=WAIT_S), victim, victims)
    # Ray restarts the lost worker where resources allow: on a node still there.
    back = wait_for("the lost worker back", lambda: (w := client.status()["workers"][victim])["alive"]
                    and w["node"] != lost and w)
    assert back["node"] in {n["NodeID"] for n in ray.nodes() if n["Alive"]}


def test_a_worker_past_its_engine_restart_budget_hands_its_sources_to_the_survivor(
    redis_db, tmp_path, car_clip, person_clip, cpu_hog
):
    """A GPU that keeps failing: one worker's engine hits sticky errors (engines/faults.py: an
    error that poisons the process, as a CUDA illegal address does) on every call, so its
    engine process (infer.isolation: process) is restarted until the budget (max_restarts: 1)
    is spent and the worker exits. A real CPU model stands in for the GPU here."""
    infer = {"contexts": 1, "isolation": "process", "max_restarts": 1}
    current, victim, victims = start_four_and_pick_a_victim(redis_db, tmp_path, [car_clip, person_clip], infer=infer)
    actor = ray.get_actor(victim, namespace=NAMESPACE)
    ray.get(actor.inject_faults.remote(FaultPlan(sticky_rate=1.0).model_dump_json()), timeout=WAIT_S)

    final = client.wait_finished(timeout_s=WAIT_S)
    assert_moved_and_every_seq_once(final, victim, victims)
    # The move came from the spent budget, not from anything else: the streams say so.
    for name in victims:
        entries = redis_db.client().xrange(f"vidpipe:results:{name}")
        kinds = [fields["type"] for _, fields in entries]
        assert "worker_budget_exhausted" in kinds, (name, [k for k in kinds if k != "frame"])
    # Ray restarted the actor (a new process, clean), and it took no source back.
    back = wait_for("the worker restarted", lambda: (w := client.status()["workers"][victim])["alive"]
                    and w["pid"] != current["workers"][victim]["pid"] and w)
    assert back["incarnation"] != current["workers"][victim]["incarnation"]
    assert all(row["worker"] != victim for row in final["sources"].values())


def test_each_worker_serves_metrics_labelled_with_its_name(redis_db, tmp_path, car_clip, person_clip):
    sources = [{"url": str(car_clip), "name": "east"}, {"url": str(person_clip), "name": "west"}]
    client.start_cluster(make_config(redis_db.url, tmp_path, sources, max_frames=30, metrics={"port": 0}), workers=2)
    final = client.wait_finished(timeout_s=WAIT_S)
    assert final["finished"]
    from prometheus_client.parser import text_string_to_metric_families

    scraped: dict[tuple[str, str, str], float] = {}
    for worker, info in final["workers"].items():
        url = f"http://127.0.0.1:{info['metrics_port']}/metrics"
        text = urllib.request.urlopen(url, timeout=60).read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "vidpipe_cluster_frames_total":
                    assert sample.labels["worker"] == worker, (url, sample)
                    scraped[worker, sample.labels["source"], sample.labels["status"]] = sample.value
    # Each source is counted once, by the worker that holds it, and its counts are its stream's.
    ledgers = client.ledger()
    for name, row in final["sources"].items():
        assert {(w, s) for w, s, _ in scraped if s == name} == {(row["worker"], name)}
        assert scraped[row["worker"], name, "decoded"] == 30
        assert scraped[row["worker"], name, "ok"] == ledgers[name]["ok"]
        assert scraped[row["worker"], name, "failed"] == sum(ledgers[name]["failed"].values())
    assert final["sources"]["east"]["worker"] != final["sources"]["west"]["worker"]


def test_sources_are_added_and_removed_while_running(redis_db, tmp_path, car_clip, person_clip):
    config = make_config(redis_db.url, tmp_path, [{"url": str(car_clip), "name": "yard"}], realtime=True)
    client.start_cluster(config, workers=2)
    wait_for("yard publishing", lambda: frames_in(redis_db, "yard") > 0)
    assert client.add_source(SourceConfig(url=str(person_clip), name="gate", realtime=True)) == "gate"
    with pytest.raises(Exception, match="in the cluster already"):
        client.add_source(SourceConfig(url=str(person_clip), name="gate"))
    with pytest.raises(Exception, match="a source name is 1-64 letters"):
        client.add_source(SourceConfig(url=str(person_clip), name="../etc"))
    wait_for("gate publishing", lambda: frames_in(redis_db, "gate") >= 3)
    # Load-based placement: the new source went to the worker that had none.
    rows = client.status()["sources"]
    assert rows["gate"]["worker"] != rows["yard"]["worker"]

    client.remove_source("gate")
    wait_for("gate's end", lambda: stream_ledger(redis_db.client(), "vidpipe:results:gate", "0-0").frames
             and redis_db.client().xrevrange("vidpipe:results:gate", count=1)[0][1]["type"] == "summary")
    assert "gate" not in client.status()["sources"]
    gate = stream_ledger(redis_db.client(), "vidpipe:results:gate", "0-0")
    assert gate.missing == [] and gate.duplicates == [] and gate.frames >= 3
    ends = [f for _, f in redis_db.client().xrange("vidpipe:results:gate") if f["type"] == "source_end"]
    assert '"reason":"stopped"' in ends[-1]["data"]
    assert client.status()["sources"]["yard"]["state"] == "running"
    with pytest.raises(Exception, match="no source 'gate'"):
        client.remove_source("gate")


def test_a_restarted_coordinator_recovers_the_assignment(redis_db, tmp_path, car_clip, person_clip):
    sources = [{"url": str(car_clip), "name": "north"}, {"url": str(person_clip), "name": "south"}]
    config = make_config(redis_db.url, tmp_path, sources, max_frames=60, realtime=True)
    coordinator = client.start_cluster(config, workers=2)
    before = wait_for("both running", lambda: (s := client.status()) and all(
        r["state"] == "running" for r in s["sources"].values()) and s)
    old_pid = ray.get(coordinator.pid.remote())
    os.kill(old_pid, signal.SIGKILL)
    wait_for("the coordinator back", lambda: _pid_or_none(coordinator) not in (None, old_pid))
    final = client.wait_finished(timeout_s=WAIT_S)
    assert final["finished"]
    for name, row in final["sources"].items():
        assert row["worker"] == before["sources"][name]["worker"]
        assert row["moves"] == 0
    for name, ledger in client.ledger().items():
        assert ledger["balanced"] and ledger["frames"] == 60, (name, ledger)


def _pid_or_none(coordinator) -> int | None:
    try:
        return ray.get(coordinator.pid.remote(), timeout=5)
    except Exception:
        return None


def test_without_ray_the_cluster_command_says_how_to_install_it():
    code = (
        "import sys; sys.modules['ray'] = None; from pipeline.cli.main import main; "
        "sys.exit(main(['cluster', 'status']))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "vidpipe: error: vidpipe cluster needs Ray, which is not installed; pip install 'vidpipe[cluster]'"
    )


def test_a_live_source_moved_off_a_killed_worker_reports_the_outage_and_seq_continues(
    redis_db, tmp_path, media
):
    from tests.rtsp_server import RtspServer

    with RtspServer(media.resolve(), tmp_path / "rtsp.log") as rtsp:
        sources = [{"url": rtsp.url(clip), "name": name, "stall_s": 3.0, "open_timeout_s": 10.0}
                   for name, clip in (("door", "car-detection.mp4"), ("hall", "one-by-one-person-detection.mp4"))]
        config = make_config(redis_db.url, tmp_path, sources, max_frames=70)
        client.start_cluster(config, workers=2)
        current = wait_for("door publishing", lambda: frames_in(redis_db, "door") >= 10 and client.status())
        victim = current["sources"]["door"]["worker"]
        os.kill(current["workers"][victim]["pid"], signal.SIGKILL)
        final = client.wait_finished(timeout_s=WAIT_S)
    assert final["finished"] and final["sources"]["door"]["moves"] >= 1
    door = stream_ledger(redis_db.client(), "vidpipe:results:door", "0-0")
    assert door.missing == [] and door.duplicates == [] and door.frames == door.expected == 70, door
    entries = [(f["type"], f) for _, f in redis_db.client().xrange("vidpipe:results:door")]
    kinds = [kind for kind, _ in entries]
    start, end = kinds.index("outage_start"), kinds.index("outage_end")
    assert end == start + 1
    import json

    begun, ended = json.loads(entries[start][1]["data"]), json.loads(entries[end][1]["data"])
    first_seq = final["sources"]["door"]["history"][-1]["first_seq"]
    assert begun["after_seq"] == ended["after_seq"] == first_seq - 1
    assert ended["duration_s"] > 0
    seqs = [int(f["seq"]) for kind, f in entries if kind == "frame"]
    assert seqs == list(range(70))  # in order, no hole where the source moved


def test_the_cli_runs_a_site_reports_the_ledger_and_stops(redis_db, ray_cluster, tmp_path, car_clip):
    config = tmp_path / "site.yaml"
    config.write_text(
        f"sources:\n  - url: {car_clip}\n    name: lobby\n  - url: {car_clip}\n    name: lift\n"
        f"outputs:\n  redis:\n    url: {redis_db.url}\n    spool_dir: {tmp_path / 'spool'}\n"
    )
    address = ray_cluster.address
    run = vidpipe(
        "cluster", "--ray", address, "--config", str(config), "--max-frames", "20", "--workers", "2", timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert "cluster ledger (from the streams): 40 results = 40 ok + 0 failed" in run.stdout
    status = vidpipe("cluster", "status", "--ray", address, timeout=300)
    assert status.returncode == 0 and "lobby" in status.stdout and "lift" in status.stdout
    missing = vidpipe("cluster", "add", str(tmp_path / "nope.mp4"), "--ray", address, timeout=300)
    expected = f"vidpipe: error: {tmp_path / 'nope.mp4'}: no such file; check the path"
    assert (missing.returncode, missing.stderr.strip()) == (2, expected)
    again = vidpipe("cluster", "--ray", address, "--config", str(config), timeout=300)
    assert again.returncode == 2 and "running already" in again.stderr
    assert vidpipe("cluster", "stop", "--ray", address, timeout=300).returncode == 0
    gone = vidpipe("cluster", "status", "--ray", address, timeout=300)
    assert gone.returncode == 2 and gone.stderr.strip() == (
        "vidpipe: error: no vidpipe cluster is running; start one with vidpipe cluster --config FILE"
    )
