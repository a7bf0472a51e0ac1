"""The escalation ladder (pipeline/runtime/ladder.py) over a real ONNX Runtime engine."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from engines.base import EngineEvent, Reloadable
from engines.fault_plan import FaultPlan
from engines.faults import FaultyEngine
from engines.onnxruntime import OnnxRuntimeEngine
from pipeline.assets import DEFAULT_MODEL
from pipeline.runtime.ladder import EscalationLadder


@pytest.fixture
def engine(tmp_path: Path) -> OnnxRuntimeEngine:
    model = tmp_path / "model.onnx"
    shutil.copy(DEFAULT_MODEL, model)
    engine = OnnxRuntimeEngine(model)
    yield engine
    engine.close()


def ladder_over(engine, reload_after: int = 3) -> tuple[EscalationLadder, list, list, list]:
    counted, published, reloaded = [], [], []
    ladder = EscalationLadder(engine, lambda kind, d: counted.append(kind), reload_after, 60.0,
                              lambda: reloaded.append(True))
    ladder.on_event = lambda kind, d: published.append((kind, d))
    return ladder, counted, published, reloaded


def test_fresh_failures_in_a_row_reload_the_engine_once(engine: OnnxRuntimeEngine) -> None:
    assert isinstance(engine, Reloadable)
    ladder, counted, published, reloaded = ladder_over(engine)
    session = engine._session
    ladder.fresh_failed()
    ladder.fresh_failed()
    assert counted == [] and reloaded == []
    ladder.fresh_failed()
    assert counted == [EngineEvent.ENGINE_RELOADED] and reloaded == [True]
    assert engine._session is not session, "the engine was not reloaded"
    kind, details = published[0]
    assert kind == "engine_reloaded" and details["after_failures"] == 3 and details["reload_ms"] >= 0
    ladder.fresh_failed()
    ladder.fresh_failed()
    assert len(reloaded) == 1, "the count starts again after a reload"


def test_a_success_between_failures_resets_the_count(engine: OnnxRuntimeEngine) -> None:
    ladder, counted, _, _ = ladder_over(engine)
    for _ in range(4):
        ladder.fresh_failed()
        ladder.fresh_failed()
        ladder.fresh_ok()
    assert counted == []


def test_a_failed_reload_is_reported_and_the_run_goes_on(engine: OnnxRuntimeEngine, tmp_path: Path) -> None:
    ladder, counted, published, reloaded = ladder_over(engine, reload_after=1)
    (tmp_path / "model.onnx").unlink()  # the file the engine reloads from is gone
    ladder.fresh_failed()
    assert counted == [EngineEvent.ENGINE_RELOAD_FAILED] and reloaded == []
    assert "no such file" in published[0][1]["error"]


def test_a_poisoned_engine_cannot_reload(engine: OnnxRuntimeEngine) -> None:
    faulty = FaultyEngine(engine, FaultPlan())
    faulty.poisoned = True
    ladder, counted, _, _ = ladder_over(faulty, reload_after=1)
    ladder.fresh_failed()
    assert counted == [EngineEvent.ENGINE_RELOAD_FAILED]
