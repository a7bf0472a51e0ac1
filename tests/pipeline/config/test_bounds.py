"""Every number a config can hold has an upper bound and must be finite: a walk over every model
reachable from RunConfig (optional sections, list items, tuple members, every backend's section)."""

from __future__ import annotations

import copy
import re
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from engines.errors import ConfigError
from pipeline.config import RunConfig, build_config
from pipeline.config.messages import _dotted
from tests.cli_run import vidpipe

# Free-form values passed through to ONNX Runtime, which checks them: not config fields of ours.
PASSED_THROUGH = {("model", "providers", 0, "options")}

# A config with every optional section and one item in every list, so any field can be set in it.
FULL: dict[str, Any] = {
    "sources": [{"url": "clip.mp4", "name": "a"}],
    "infer": {"batch_shapes": [1]},
    "model": {"providers": [{"name": "CPUExecutionProvider"}]},
    "outputs": {"redis": {"url": "redis://127.0.0.1:6379/0"}, "mqtt": {"url": "mqtt://127.0.0.1"}},
    "analytics": {
        "tracker": "bytetrack",
        "zones": [{"name": "z", "polygon": [[0, 0], [1, 0], [1, 1]]}],
        "lines": [{"name": "l", "start": [0, 0], "end": [1, 1]}],
    },
}

Keys = tuple[Any, ...]


def _leaves(annotation: Any, path: Keys, metadata: list[Any]) -> list[tuple[Keys, list[Any]]]:
    """(path, constraints) of every int or float under `annotation`; path parts are names and list indexes."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if path in PASSED_THROUGH:
        return []
    if origin is typing.Annotated:
        extra = [m for info in args[1:] for m in (info.metadata if isinstance(info, FieldInfo) else [info])]
        return _leaves(args[0], path, metadata + extra)
    if isinstance(annotation, types.UnionType) or origin is typing.Union:
        return [leaf for arg in args if arg is not type(None) for leaf in _leaves(arg, path, metadata)]
    if origin is list:
        return _leaves(args[0], (*path, 0), [])
    if origin is tuple:
        return [leaf for i, arg in enumerate(args) for leaf in _leaves(arg, (*path, i), [])]
    if origin is dict:
        raise AssertionError(f"{_dotted(path)}: a mapping; list it in PASSED_THROUGH or give it a model")
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [leaf for name, field in annotation.model_fields.items()
                for leaf in _leaves(field.annotation, (*path, name), list(field.metadata))]  # fmt: skip
    if annotation in (int, float):
        return [(path, metadata)]
    assert annotation in (str, bool, Path) or origin is typing.Literal or issubclass(annotation, Enum), annotation
    return []


def numeric_fields() -> dict[str, tuple[Keys, list[Any]]]:
    return {_dotted(path): (path, metadata) for path, metadata in _leaves(RunConfig, (), [])}


def with_value(path: Keys, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(FULL)
    node: Any = data
    for part, following in zip(path, path[1:]):
        if isinstance(node, dict) and part not in node:
            node[part] = [] if isinstance(following, int) else {}
        node = node[part]
    node[path[-1]] = value
    return data


def test_the_full_config_is_valid() -> None:
    build_config(FULL)


def test_the_walk_reaches_optional_sections_and_list_items() -> None:
    fields = numeric_fields()
    for path in ("outputs.mqtt.drain_timeout_s", "outputs.redis.maxlen", "sources[0].stall_s",
                 "infer.batch_shapes[0]", "analytics.zones[0].polygon[0][1]", "analytics.lines[0].end[0]",
                 "model.intra_op_threads", "faults.seed"):  # fmt: skip
        assert path in fields
    assert len(fields) > 45


@pytest.mark.parametrize("path", sorted(numeric_fields()))
def test_every_numeric_config_field_has_an_upper_bound(path: str) -> None:
    keys, metadata = numeric_fields()[path]
    bound = next((m.le for m in metadata if getattr(m, "le", None) is not None), None)
    assert bound is not None, f"{path} has no upper bound"
    with pytest.raises(ConfigError, match=f"{re.escape(path)} = .*less than or equal to"):
        build_config(with_value(keys, bound * 10 + 1))


@pytest.mark.parametrize("path", sorted(numeric_fields()))
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_no_numeric_config_field_takes_nan_or_infinity(path: str, value: float) -> None:
    keys, _ = numeric_fields()[path]
    with pytest.raises(ConfigError, match=f"{re.escape(path)} = "):
        build_config(with_value(keys, value))


@pytest.mark.parametrize(("yaml_text", "expected"), [
    ("analytics:\n  tracker: bytetrack\n  zones:\n    - name: z\n      polygon: [[0,0],[1.0e+308,0],[.nan,.inf]]\n",
     "analytics.zones[0].polygon[1][0] = 1e+308: must be less than or equal to 100000; "
     "analytics.zones[0].polygon[2][0] = nan: must be a finite number; "
     "analytics.zones[0].polygon[2][1] = inf: must be a finite number"),
    ("outputs:\n  mqtt:\n    url: mqtt://127.0.0.1\n    drain_timeout_s: 1.0e+300\n",
     "outputs.mqtt.drain_timeout_s = 1e+300: must be less than or equal to 3600"),
])  # fmt: skip
def test_a_config_past_a_bound_is_one_line_and_exit_2(tmp_path: Path, yaml_text: str, expected: str) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml_text)
    proc = vidpipe("run", "--quiet", "--config", str(config))
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == f"vidpipe: error: {config}: {expected}\n"
