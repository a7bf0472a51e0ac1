"""One place assembles a run (pipeline/runtime/assemble.py): the engine is sized for the host
before it loads, whoever loads it."""

from __future__ import annotations

import pytest

from pipeline.config import build_config
from pipeline.runtime.assemble import load_sized_model
from pipeline.runtime.model import engine_spec
from pipeline.runtime.settings import MAX_SPARES, spares_for
from pipeline.runtime.sizing import engine_threads, usable_cpus


def session_threads(model) -> int:
    """The intra-op threads of the ONNX Runtime session the engine really built."""
    return model.engine._session.get_session_options().intra_op_num_threads


@pytest.mark.skipif(usable_cpus() < 2, reason="one CPU: the sized threads equal the fallback of 1")
def test_the_engine_loads_with_the_threads_sized_for_the_host() -> None:
    config = build_config({"infer": {"contexts": 1}})
    assert config.model.intra_op_threads is None  # left on auto
    sized, model = load_sized_model(config, [])
    try:
        assert sized.model.intra_op_threads == engine_threads(config) == usable_cpus()
        assert engine_spec(sized.model).intra_op_threads == usable_cpus()
        assert session_threads(model) == usable_cpus()
    finally:
        model.engine.close()


def test_threads_given_are_kept() -> None:
    config = build_config({"model": {"intra_op_threads": 1}, "infer": {"contexts": 1}})
    sized, model = load_sized_model(config, [])
    try:
        assert sized.model.intra_op_threads == 1 and session_threads(model) == 1
    finally:
        model.engine.close()


def test_a_run_keeps_as_many_warm_spares_as_contexts_up_to_two() -> None:
    assert MAX_SPARES == 2
    assert [spares_for(n) for n in (1, 2, 3, 8)] == [1, 2, 2, 2]
