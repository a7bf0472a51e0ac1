"""Config files: the shipped examples validate, bad files are rejected with the field's path,
the bad value and what is allowed, and every CLI flag overrides its field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from engines.errors import ConfigError
from pipeline.cli.main import build_parser
from pipeline.cli.run import config_from_args
from pipeline.config import RunConfig, build_config, load_config
from tests.cli_run import vidpipe

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


def test_the_documented_examples_are_shipped() -> None:
    names = {p.name for p in CONFIGS.glob("*.yaml")}
    assert {"default.yaml", "cameras.yaml", "tensorrt.yaml", "faults-demo.yaml"} <= names


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path: Path) -> None:
    config = build_config(load_config(path), str(path))
    assert isinstance(config, RunConfig)


def test_default_yaml_is_the_embedded_default_with_every_field() -> None:
    data = load_config(CONFIGS / "default.yaml")

    assert build_config(data) == RunConfig()

    def missing(model: type[BaseModel], section: dict[str, Any], prefix: str) -> list[str]:
        out = []
        for name, field in model.model_fields.items():
            if name not in section:
                out.append(prefix + name)
            elif isinstance(section[name], dict):
                out += missing(type(getattr(RunConfig(), name)), section[name], f"{prefix}{name}.")
        return out

    assert missing(RunConfig, data, "") == []


def test_shipped_examples_say_what_the_issue_promised() -> None:
    cameras = build_config(load_config(CONFIGS / "cameras.yaml"))
    assert len(cameras.sources) >= 2 and all(s.url.startswith("rtsp://") for s in cameras.sources)
    assert all(s.policy == "shed" for s in cameras.sources) and cameras.outputs.redis is not None
    tensorrt = build_config(load_config(CONFIGS / "tensorrt.yaml"))
    assert tensorrt.model.backend == "tensorrt" and tensorrt.model.precision == "fp16"
    assert tensorrt.infer.contexts > 1 and tensorrt.decode == "nvdec"
    faults = build_config(load_config(CONFIGS / "faults-demo.yaml"))
    assert faults.faults.active


BAD_FILES = {
    "typo": (
        "infer:\n  max_bach: 8\n",
        ["infer.max_bach", "unknown field", "did you mean 'max_batch'", "allowed: contexts, max_batch"],
    ),
    "enum": ("model:\n  backend: tensorflow\n", ["model.backend", "'tensorflow'", "'onnxruntime' or 'tensorrt'"]),
    "range": ("infer:\n  contexts: 0\n", ["infer.contexts", "= 0", "greater than or equal to 1"]),
    "in a list": ("sources:\n  - url: a.mp4\n    policy: drop\n", ["sources[0].policy", "'drop'", "'block' or 'shed'"]),
    "type": ("deadline_ms: soon\n", ["deadline_ms", "'soon'", "valid number"]),
    "missing": ("sources:\n  - name: cam\n", ["sources[0].url", "required"]),
    "not a section": ("metrics: 9400\n", ["metrics = 9400", "mapping", "port"]),
    "top-level typo": ("deadline: 100\n", ["deadline", "unknown field", "did you mean 'deadline_ms'"]),
    "port": ("metrics:\n  port: 70000\n", ["metrics.port", "70000", "less than or equal to 65535"]),
    "log format": ("log_format: xml\n", ["log_format", "'xml'", "'text' or 'json'"]),
    # The model section is one variant per backend: paths and hints read as if it were flat.
    "other backend's": ("model:\n  backend: tensorrt\n  providers: [CUDAExecutionProvider]\n",
                        ["model.providers: a backend onnxruntime setting, not for backend tensorrt", "allowed: path"]),
    "backend typo": ("model:\n  backend: tensorrt\n  precison: fp16\n", ["model.precison", "did you mean 'precision'"]),
    "backend range": ("model:\n  backend: tensorrt\n  conf: 2\n", ["model.conf = 2", "less than or equal to 1"]),
    "not a model section": ("model: 5\n", ["model = 5", "mapping", "conf"]),
}  # fmt: skip


@pytest.mark.parametrize("name", BAD_FILES)
def test_a_bad_file_names_the_path_the_value_and_what_is_allowed(tmp_path: Path, name: str) -> None:
    text, expected = BAD_FILES[name]
    path = tmp_path / "bad.yaml"
    path.write_text(text)

    with pytest.raises(ConfigError) as caught:
        build_config(load_config(path), str(path))

    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert "\n" not in message
    for part in expected:
        assert part in message, message


def test_several_errors_are_all_reported(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("infer:\n  contexts: 0\n  max_batch: lots\nqueues:\n  sise: 4\n")

    with pytest.raises(ConfigError) as caught:
        build_config(load_config(path), str(path))

    for part in ("infer.contexts", "infer.max_batch = 'lots'", "queues.sise", "did you mean 'size'"):
        assert part in str(caught.value)


def test_not_yaml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("model: [unclosed\n")

    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_cli_rejects_a_bad_file_with_one_line_and_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  backend: tensorflow\n")

    proc = vidpipe("run", "--config", str(path), timeout=60)

    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0].startswith("vidpipe: error: ")
    assert "model.backend" in lines[0] and "'tensorflow'" in lines[0] and "'onnxruntime' or 'tensorrt'" in lines[0]


FLAGS = [
    (["--deadline-ms", "750"], "deadline_ms", 750.0),
    (["--batch", "8"], "infer.max_batch", 8),
    (["--contexts", "3"], "infer.contexts", 3),
    (["--max-attempts", "5"], "infer.max_attempts", 5),
    (["--queue-size", "4"], "queues.size", 4),
    (["--conf", "0.5"], "model.conf", 0.5),
    (["--backend", "tensorrt"], "model.backend", "tensorrt"),
    (["--faults", "error_rate=0.2,seed=3"], "faults.error_rate", 0.2),
    (["--out", "r.jsonl"], "outputs.jsonl", Path("r.jsonl")),
    (["--video", "annotated"], "outputs.video", Path("annotated")),
    (["--metrics-port", "9400"], "metrics.port", 9400),
    (["--log-format", "json"], "log_format", "json"),
    (["--quiet"], "progress", False),
]


@pytest.mark.parametrize(("flags", "field", "value"), FLAGS, ids=lambda v: v[0] if isinstance(v, list) else None)
def test_every_flag_overrides_its_field_in_the_file(flags: list[str], field: str, value: Any) -> None:
    config_path = CONFIGS / "faults-demo.yaml"
    args = build_parser().parse_args(["run", "--config", str(config_path), *flags])

    config = config_from_args(args)

    node: Any = config
    for part in field.split("."):
        node = getattr(node, part)
    assert node == value
    assert config.faults.hang_rate == 0.01  # the file's other fields stay


def test_a_bad_flag_value_names_the_field() -> None:
    args = build_parser().parse_args(["run", "--contexts", "0"])

    with pytest.raises(ConfigError, match=r"flags: infer\.contexts = 0: must be greater than or equal to 1"):
        config_from_args(args)
