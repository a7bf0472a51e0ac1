"""Class names for a detection model: from a labels file, the model's metadata, or COCO."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from engines.errors import ModelError

COCO_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip


def load_names(metadata: dict[str, str], labels_path: Path | None, num_classes: int | None) -> list[str]:
    """The model's class names, in class-id order.

    Priority: the labels file (one name per line), the model's `names` metadata (as
    Ultralytics writes it), COCO when the model has 80 classes, else "class0".."classN-1".
    `num_classes` None (a post-NMS output, whose rows carry class ids) takes any count and
    defaults to COCO.
    """
    if labels_path is not None:
        return _read_labels_file(Path(labels_path), num_classes)
    if "names" in metadata:
        return _parse_metadata_names(metadata["names"], num_classes)
    if num_classes is None or num_classes == len(COCO_NAMES):
        return list(COCO_NAMES)
    return [f"class{i}" for i in range(num_classes)]


def metadata_name_count(metadata: dict[str, str]) -> int | None:
    """How many class names the model's `names` metadata holds; None without readable names."""
    if "names" not in metadata:
        return None
    try:
        return len(_parse_metadata_names(metadata["names"], None))
    except ModelError:
        return None


def _read_labels_file(path: Path, num_classes: int | None) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelError(
            f"cannot read labels file {path}: {exc.strerror or exc}; "
            "pass a text file with one class name per line"
        ) from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if num_classes is None and not names:
        raise ModelError(f"labels file {path} has no names; give it one class name per line")
    if num_classes is not None and len(names) != num_classes:
        raise ModelError(
            f"labels file {path} has {len(names)} names but the model has {num_classes} classes; "
            f"give it exactly {num_classes} lines, one name per class in class-id order"
        )
    return names


def _parse_metadata_names(raw: str, num_classes: int | None) -> list[str]:
    # Ultralytics writes str(dict) ("{0: 'person', ...}"), which is a Python literal, not JSON.
    value: object = None
    for parse in (ast.literal_eval, json.loads):
        try:
            value = parse(raw)
            break
        except (ValueError, SyntaxError, TypeError):
            continue
    names = _names_from_value(value)
    if names is None:
        raise ModelError(
            f"cannot read the model's 'names' metadata {raw[:80]!r}: expected a dict of "
            "class id to name or a list of names; pass a labels file with one name per line"
        )
    if num_classes is not None and len(names) != num_classes:
        raise ModelError(
            f"the model's 'names' metadata has {len(names)} names but the model has "
            f"{num_classes} classes; pass a labels file with {num_classes} lines"
        )
    return names


def _names_from_value(value: object) -> list[str] | None:
    if isinstance(value, (list, tuple)) and all(isinstance(n, str) for n in value):
        return list(value)
    if isinstance(value, dict):
        try:
            by_id = {int(key): str(name) for key, name in value.items()}
        except (TypeError, ValueError):
            return None
        if sorted(by_id) != list(range(len(by_id))):
            return None
        return [by_id[i] for i in range(len(by_id))]
    return None
