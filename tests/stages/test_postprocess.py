"""Postprocess: real ONNX models in real onnxruntime, decoded back to source pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from engines.errors import ModelError, StageError
from stages.labels import COCO_NAMES, load_names
from stages.layouts import AmbiguousLayout, detect_head
from stages.postprocess import Postprocess, detect_layout
from stages.types import Frame, Letterbox
from tests.models import (
    CANDIDATES,
    KEPT,
    build_bad_layout_model,
    build_fixed_batch_model,
    build_yolov5_model,
    build_yolov8_model,
    build_yolox_model,
)

SOURCE_SIZE = (641, 359)
BUILDERS = {"yolov8": build_yolov8_model, "yolov5": build_yolov5_model, "yolox": build_yolox_model}


def letterbox_for(source_size: tuple[int, int], input_size: tuple[int, int]) -> Letterbox:
    (sw, sh), (w, h) = source_size, input_size
    ratio = min(w / sw, h / sh)
    pad_x = (w - round(sw * ratio)) / 2
    pad_y = (h - round(sh * ratio)) / 2
    return Letterbox(ratio=ratio, pad_x=pad_x, pad_y=pad_y, source_size=source_size)


def in_source_pixels(indices: list[int], box: Letterbox) -> np.ndarray:
    xyxy = np.array([CANDIDATES[i][2:] for i in indices], np.float64)
    xyxy[:, 0::2] = ((xyxy[:, 0::2] - box.pad_x) / box.ratio).clip(0, box.source_size[0])
    xyxy[:, 1::2] = ((xyxy[:, 1::2] - box.pad_y) / box.ratio).clip(0, box.source_size[1])
    return xyxy


class RunModel:
    """A built model loaded in onnxruntime, ready to turn a batch into frames."""

    def __init__(self, path: Path, input_size: tuple[int, int]) -> None:
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.input_size = input_size
        self.output_shape = tuple(self.session.get_outputs()[0].shape)
        self.metadata = self.session.get_modelmeta().custom_metadata_map
        self.letterbox = letterbox_for(SOURCE_SIZE, input_size)

    def frames(self, batch: int = 1) -> list[Frame]:
        width, height = self.input_size
        images = np.random.default_rng(0).random((batch, 3, height, width), np.float32)
        outputs = self.session.run(None, {"images": images})
        names = [o.name for o in self.session.get_outputs()]
        return [
            Frame(
                source="cam0", seq=i, time_s=None, decoded_at=0.0, deadline=1.0, wall_time=0.0,
                image=np.zeros((SOURCE_SIZE[1], SOURCE_SIZE[0], 3), np.uint8),
                source_size=SOURCE_SIZE, letterbox=self.letterbox,
                outputs={name: output[i] for name, output in zip(names, outputs)},
            )  # fmt: skip
            for i in range(batch)
        ]

    def postprocess(self, **options) -> Postprocess:
        names = load_names(self.metadata, None, self.head.num_classes)
        return Postprocess(self.output_shape, self.input_size, names, layout=self.head, **options)

    @property
    def head(self):
        """What load_model reads: the shape and metadata, and one output where they cannot tell."""
        try:
            return detect_head(self.output_shape, self.input_size, "auto", self.metadata)
        except AmbiguousLayout:
            sample = next(iter(self.frames()[0].outputs.values()))
            return detect_head(self.output_shape, self.input_size, "auto", self.metadata, sample)

    @property
    def layout(self) -> str:
        return self.head.layout


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, RunModel]:
    root = tmp_path_factory.mktemp("models")
    built = {
        layout: RunModel(build(root / f"{layout}.onnx"), (320, 320))
        for layout, build in BUILDERS.items()
    }
    # A non-square input catches a swapped width/height in the YOLOX grid.
    built["yolox-320x256"] = RunModel(
        build_yolox_model(root / "yolox-320x256.onnx", input_size=(320, 256)), (320, 256)
    )
    return built


@pytest.mark.parametrize("model", ["yolov8", "yolov5", "yolox", "yolox-320x256"])
def test_decodes_known_boxes_into_source_pixels(models: dict[str, RunModel], model: str) -> None:
    run = models[model]
    frame = run.frames()[0]

    returned = run.postprocess()(frame)

    detections = frame.detections
    assert returned is frame
    np.testing.assert_allclose(
        detections.xyxy, in_source_pixels(KEPT, run.letterbox), rtol=0, atol=1e-3
    )
    np.testing.assert_allclose(detections.score, [0.90, 0.80, 0.70, 0.55], rtol=1e-5)
    np.testing.assert_array_equal(detections.class_id, [0, 2, 16, 1])
    assert detections.labels == ("person", "car", "dog", "bicycle")
    assert detections.xyxy.dtype == np.float32
    assert detections.score.dtype == np.float32
    assert detections.class_id.dtype == np.int32


@pytest.mark.parametrize("layout", ["yolov8", "yolov5", "yolox"])
def test_detects_each_layout_from_the_model_output(models: dict[str, RunModel], layout: str):
    assert models[layout].layout == layout


def test_detects_layouts_from_their_shapes() -> None:
    assert detect_layout((1, 84, 8400), (640, 640)) == "yolov8"
    assert detect_layout(("batch", 84, "anchors"), (640, 640)) == "yolov8"
    assert detect_layout((None, 25200, 85), (640, 640)) == "yolov5"
    assert detect_layout((1, 5040, 85), (320, 256)) == "yolov5"
    assert detect_layout((1, 300, 6), (640, 640)) == "e2e"
    # [B, grid, K] is YOLOX or a transposed YOLOv8: offsets from a cell say YOLOX.
    offsets = np.zeros((8400, 85), np.float32)
    offsets[7, :4] = (0.5, 0.25, 1.0, 1.5)
    assert detect_layout((1, 8400, 85), (640, 640), sample=offsets) == "yolox"
    assert detect_layout((1, 1680, 85), (320, 256), sample=offsets[:1680]) == "yolox"
    assert detect_layout((1, 8400, 85), (640, 640), {"names": str([f"c{i}" for i in range(80)])}) == "yolox"


def test_a_shape_no_decoder_fits_is_a_model_error(tmp_path: Path) -> None:
    run = RunModel(build_bad_layout_model(tmp_path / "bad.onnx"), (320, 320))

    with pytest.raises(ModelError) as error:
        Postprocess(run.output_shape, run.input_size, list(COCO_NAMES))

    message = str(error.value)
    assert "['batch', 7, 7]" in message
    assert all(name in message for name in ("yolov8", "yolov5", "yolox", "e2e"))
    assert "--layout" in message
    assert "\n" not in message


def test_nms_removes_a_lower_scored_duplicate_of_the_same_class(models: dict[str, RunModel]):
    run = models["yolov8"]
    frame = run.postprocess()(run.frames()[0])

    assert 0.60 not in np.round(frame.detections.score, 2)
    without_nms = run.postprocess(iou=1.0)(run.frames()[0])
    np.testing.assert_allclose(without_nms.detections.score, [0.9, 0.8, 0.7, 0.6, 0.55], rtol=1e-5)


def test_nms_keeps_the_same_box_of_another_class(models: dict[str, RunModel]) -> None:
    run = models["yolov5"]
    detections = run.postprocess()(run.frames()[0]).detections

    person, car = detections.labels.index("person"), detections.labels.index("car")
    np.testing.assert_array_equal(detections.xyxy[person], detections.xyxy[car])


def test_boxes_are_clipped_at_the_image_border(models: dict[str, RunModel]) -> None:
    run = models["yolov8"]
    detections = run.postprocess()(run.frames()[0]).detections

    bicycle = detections.xyxy[detections.labels.index("bicycle")]
    assert bicycle[1] == 0.0  # it started in the top padding
    assert bicycle[2] == 641.0  # it ran past the right edge
    assert detections.xyxy[:, 0::2].max() <= 641 and detections.xyxy[:, 1::2].max() <= 359


def test_classes_keeps_only_the_named_classes(models: dict[str, RunModel]) -> None:
    run = models["yolox"]
    detections = run.postprocess(classes=["dog", "bicycle"])(run.frames()[0]).detections

    assert detections.labels == ("dog", "bicycle")
    np.testing.assert_allclose(detections.xyxy, in_source_pixels([3, 5], run.letterbox), atol=1e-3)


def test_an_unknown_class_is_a_model_error_listing_the_valid_names(models: dict[str, RunModel]):
    with pytest.raises(ModelError, match="'unicorn'.*person, bicycle, car"):
        models["yolov8"].postprocess(classes=["dog", "unicorn"])


def test_conf_and_max_det(models: dict[str, RunModel]) -> None:
    run = models["yolov5"]

    strict = run.postprocess(conf=0.75)(run.frames()[0]).detections
    loose = run.postprocess(conf=0.1)(run.frames()[0]).detections
    capped = run.postprocess(max_det=2)(run.frames()[0]).detections

    assert strict.labels == ("person", "car")
    assert loose.labels == ("person", "car", "dog", "bicycle", "dog")
    assert capped.labels == ("person", "car")


def test_nothing_above_the_threshold_gives_empty_detections(models: dict[str, RunModel]):
    run = models["yolov8"]
    detections = run.postprocess(conf=0.95)(run.frames()[0]).detections

    assert len(detections) == 0
    assert detections.xyxy.shape == (0, 4) and detections.xyxy.dtype == np.float32
    assert detections.class_id.dtype == np.int32
    assert detections.labels == ()


def test_every_frame_of_a_dynamic_batch_decodes_the_same(models: dict[str, RunModel]) -> None:
    run = models["yolox"]
    postprocess = run.postprocess()

    frames = [postprocess(frame) for frame in run.frames(batch=3)]

    for frame in frames:
        np.testing.assert_allclose(frame.detections.xyxy, in_source_pixels(KEPT, run.letterbox),
                                   atol=1e-3)  # fmt: skip


def test_a_fixed_batch_model_decodes_each_frame(tmp_path: Path) -> None:
    run = RunModel(build_fixed_batch_model(tmp_path / "fixed.onnx", batch=2), (320, 320))
    assert run.output_shape == (2, 84, 2100)

    frames = [run.postprocess()(frame) for frame in run.frames(batch=2)]

    for frame in frames:
        assert frame.detections.labels == ("person", "car", "dog", "bicycle")


def test_labels_come_from_the_model_metadata(tmp_path: Path) -> None:
    names = ["cat", "dog", "bird"]
    boxes = [(2, 0.9, 10, 100, 50, 150), (0, 0.8, 200, 100, 260, 200)]
    run = RunModel(build_yolov8_model(tmp_path / "pets.onnx", boxes, 3, names=names), (320, 320))

    detections = run.postprocess()(run.frames()[0]).detections

    assert run.metadata["names"] == "{0: 'cat', 1: 'dog', 2: 'bird'}"
    assert detections.labels == ("bird", "cat")
    np.testing.assert_array_equal(detections.class_id, [2, 0])


def test_an_explicit_layout_that_does_not_fit_is_a_model_error(models: dict[str, RunModel]):
    run = models["yolox"]
    with pytest.raises(ModelError, match="unknown layout 'yolov9'"):
        Postprocess(run.output_shape, run.input_size, list(COCO_NAMES), layout="yolov9")
    with pytest.raises(ModelError, match="has 2100 candidates but a yolox head on a 320x256"):
        Postprocess(run.output_shape, (320, 256), list(COCO_NAMES), layout="yolox")
    with pytest.raises(ModelError, match="3 class names for a model with 80 classes"):
        Postprocess(run.output_shape, run.input_size, ["a", "b", "c"], layout="yolox")


def test_postprocess_wants_one_frame_without_the_batch_dim(models: dict[str, RunModel]):
    run = models["yolov8"]
    frame = run.frames()[0]
    frame.outputs = {"output0": frame.outputs["output0"][None]}
    with pytest.raises(StageError, match=r"\[1, 84, 2100\]"):
        run.postprocess()(frame)


# load_names


def test_a_labels_file_wins_over_metadata_and_ignores_blank_lines(tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("helmet\n\nvest\n  \nboots\n")

    names = load_names({"names": "{0: 'a', 1: 'b', 2: 'c'}"}, labels, 3)

    assert names == ["helmet", "vest", "boots"]


@pytest.mark.parametrize(
    "raw",
    [
        "{0: 'helmet', 1: 'vest', 2: 'boots'}",
        "['helmet', 'vest', 'boots']",
        '{"0": "helmet", "1": "vest", "2": "boots"}',
        '["helmet", "vest", "boots"]',
    ],
)
def test_metadata_names_in_the_forms_exporters_write(raw: str) -> None:
    assert load_names({"names": raw}, None, 3) == ["helmet", "vest", "boots"]


def test_coco_names_for_an_80_class_model_without_names() -> None:
    names = load_names({}, None, 80)

    assert len(COCO_NAMES) == 80
    assert names == list(COCO_NAMES)
    assert names[0] == "person" and names[16] == "dog" and names[79] == "toothbrush"


def test_generic_names_otherwise() -> None:
    assert load_names({"author": "me"}, None, 3) == ["class0", "class1", "class2"]


def test_a_labels_file_with_the_wrong_count_is_a_model_error(tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("helmet\nvest\n")

    with pytest.raises(ModelError) as error:
        load_names({}, labels, 3)

    message = str(error.value)
    assert str(labels) in message and "2 names" in message and "3 classes" in message


def test_a_missing_labels_file_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="nope.txt"):
        load_names({}, tmp_path / "nope.txt", 80)


@pytest.mark.parametrize("raw", ["person,car", "{0: 'a', 2: 'c'}", "42"])
def test_unreadable_metadata_names_are_a_model_error(raw: str) -> None:
    with pytest.raises(ModelError, match="labels file"):
        load_names({"names": raw}, None, 2)
