"""The publisher: a failing sink stops the run cleanly, a failing hook is reported; neither
stalls the run or starves the other sinks."""

from __future__ import annotations

from pipeline.api import run
from pipeline.config import build_config
from pipeline.runtime.pipeline import RunHooks
from tests.sinks import CollectSink


class BrokenSink(CollectSink):
    """A sink whose storage fails after 50 results, as a full disk would."""

    def write_result(self, result) -> None:
        if len(self.results) >= 50:
            raise OSError("No space left on device")
        super().write_result(result)


def test_a_failing_sink_stops_the_run_and_the_other_sinks_get_every_result_and_the_summary():
    broken, healthy = BrokenSink(), CollectSink()
    summary = run(build_config({}), sinks=[broken, healthy])  # the 200-frame sample clip
    decoded = summary.frames
    assert 50 < decoded < 200  # the sources stopped once the write failed
    assert [r.seq for r in healthy.results] == list(range(decoded))
    assert all(r.reason.value == "shutdown" for r in healthy.results if r.status.value == "failed")
    assert len(broken.results) == 50 and broken.summary is None
    assert healthy.summary is summary and summary.balanced
    assert summary.error == "BrokenSink: writing failed (No space left on device)"


def test_a_hook_that_raises_does_not_hang_the_run():
    def explode(result) -> None:
        raise RuntimeError("dashboard bug")

    sink = CollectSink()
    summary = run(build_config({"max_frames": 40}), sinks=[sink], hooks=RunHooks(on_result=explode))
    assert [r.seq for r in sink.results] == list(range(40))
    assert "dashboard bug" in summary.error
