"""The Redis sink's spool on a disk that fills up for real (a 256 KiB tmpfs): results the spool
could not take reach Redis after the spooled ones, in seq order, and no spool file is left."""

from __future__ import annotations

import logging

import pytest

from pipeline.sinks.redis.spool import Spool
from tests.redis_server import (
    assert_ids_increase,
    fill_disk,
    finish,
    frame_seqs,
    paused_after,
    publish,
    spool_files,
    stream,
    wait_for,
)


def test_results_the_full_spool_could_not_take_follow_the_spooled_ones_in_order(redis_server, small_disk, caplog):
    """Redis hangs mid-run: results spool until the disk is full, the rest wait in memory; when
    Redis is back the spooled ones go first, then those from memory, each once, in seq order."""
    spool_dir = small_disk / "spool"
    sink = paused_after(redis_server, spool_dir)
    with caplog.at_level(logging.WARNING):
        publish(sink, "cam1", range(50, 100))
        wait_for(lambda: sink.spool_bytes > 0)  # spooling: what follows is appended to the spool
        publish(sink, "cam1", range(100, 1500))  # ~900 KiB: the disk fills, the rest waits in memory
        assert "No space left on device" in caplog.text
        redis_server.resume()
        summary = finish(sink, {"cam1": 1500})
    entries = stream(redis_server, "cam1")
    assert frame_seqs(entries) == list(range(1500))
    assert_ids_increase(entries)
    assert [f for _, f in entries if "from_seq" in f] == []  # nothing re-sent under a new base
    report = summary.outputs["redis"]
    assert (report["drained"], report["resent"], report["duplicates"], report["lost"]) == (True, 0, 0, 0)
    assert "never written there" not in caplog.text
    assert spool_files(spool_dir) == []  # no delivered data file, no .state.tmp, no lock


def test_a_spool_that_cannot_be_created_on_a_full_disk_leaves_no_file(small_disk):
    spool_dir = small_disk / "spool"
    spool_dir.mkdir()
    fill_disk(small_disk)
    for attempt in range(3):
        with pytest.raises(OSError, match="No space"):
            Spool.create(spool_dir, f"stem-{attempt}", {"run": f"run-{attempt}"})
    assert spool_files(spool_dir) == []


def test_temp_state_files_left_by_an_earlier_version_are_removed(tmp_path):
    """A .state.tmp without its spool (the old full-disk bug left one per run) goes at the next start."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    for n in range(2):
        (spool_dir / f"0000000000001-run{n}.state.tmp").write_text("")
    assert Spool.leftovers(spool_dir) == []
    assert spool_files(spool_dir) == []
