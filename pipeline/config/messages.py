"""Pydantic's validation errors as one line a person can act on: each error's dotted path
(`sources[0].url`, `model.conf`), the bad value and what is allowed, secrets redacted."""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

from pydantic import BaseModel, Tag, ValidationError

from stages.redact import redact

MAX_ERRORS_SHOWN = 3


def format_validation_error(err: ValidationError, origin: str, root: type[BaseModel]) -> str:
    """One line: each error's dotted path in `root` (the whole config), the bad value and what is allowed."""
    errors = err.errors()
    shown = "; ".join(_describe_error(e, root) for e in errors[:MAX_ERRORS_SHOWN])
    more = f" (and {len(errors) - MAX_ERRORS_SHOWN} more)" if len(errors) > MAX_ERRORS_SHOWN else ""
    return redact(f"{origin}: {shown}{more}")  # a bad value may be a URL with a password


def _describe_error(error: dict[str, Any], root: type[BaseModel]) -> str:
    loc, variants = _without_tags(tuple(error["loc"]), root)
    path = _dotted(loc) or "(top level)"
    value = error.get("input")
    kind = error["type"]
    if kind == "missing":
        return f"{path}: missing; this field is required"
    if kind == "extra_forbidden":
        parent = _model_at(tuple(error["loc"])[:-1], root)
        allowed = list(parent.model_fields) if parent else []
        owner = [(tag, model) for tag, model in variants.items() if loc[-1] in model.model_fields]
        if owner and parent is not None:
            field, mine = _tag_field(parent), next(tag for tag, model in variants.items() if model is parent)
            return f"{path}: a {field} {owner[0][0]} setting, not for {field} {mine}; allowed: {', '.join(allowed)}"
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{path}: unknown field{hint}; allowed: {', '.join(allowed)}"
    if kind in ("model_type", "union_tag_not_found"):
        model = _model_at(loc, root)
        fields = ", ".join(model.model_fields) if model else ""
        return f"{path} = {value!r}: must be a mapping with the fields {fields}"
    if kind == "union_tag_invalid":  # a discriminated section: its discriminator is named after its field
        field = error["ctx"]["discriminator"].removesuffix("()")
        tags = error["ctx"]["expected_tags"].rsplit(", ", 1)
        return f"{path}.{field} = {value.get(field)!r}: must be {' or '.join(tags)}"
    if kind == "path_type":
        return f"{path} = {value!r}: must be a path (a string)"
    message = error["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
    if kind == "value_error" and not loc:
        return message  # a rule across fields: the message names them
    return f"{path} = {value!r}: {message}"


def _dotted(loc: tuple[Any, ...]) -> str:
    """('sources', 0, 'url') -> 'sources[0].url'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _without_tags(loc: tuple[Any, ...], root: type[BaseModel]) -> tuple[tuple[Any, ...], dict[str, type[BaseModel]]]:
    """The location without the tags pydantic puts after a discriminated section
    (('model', 'tensorrt', 'conf') -> ('model', 'conf')), and the last such section's variants."""
    annotation: Any = root
    out: list[Any] = []
    variants: dict[str, type[BaseModel]] = {}
    for part in loc:
        tagged = _tagged(annotation)
        if tagged and part in tagged:
            annotation, variants = tagged[part], tagged
            continue
        out.append(part)
        model = _find_model(annotation)
        if isinstance(part, int):
            annotation = _list_item(annotation)
        elif model is not None and part in model.model_fields:
            annotation = model.model_fields[part].annotation
        else:
            annotation = None
    return tuple(out), variants


def _model_at(loc: tuple[Any, ...], root: type[BaseModel]) -> type[BaseModel] | None:
    """The config section (pydantic model) a location points into, e.g. ('infer',) -> InferConfig;
    ('model', 'tensorrt') -> the tensorrt variant, ('model',) -> the default one."""
    annotation: Any = root
    for part in loc:
        tagged = _tagged(annotation)
        model = _find_model(annotation)
        if tagged and part in tagged:
            annotation = tagged[part]
        elif isinstance(part, int):
            annotation = _list_item(annotation)
        elif model is not None and part in model.model_fields:
            annotation = model.model_fields[part].annotation
        else:
            return None
    return _find_model(annotation)


def _tagged(annotation: Any) -> dict[str, type[BaseModel]]:
    """The variants of a discriminated union by tag, e.g. {'onnxruntime': ..., 'tensorrt': ...}; {} for others."""
    out: dict[str, type[BaseModel]] = {}
    for arg in typing.get_args(annotation) if _is_union(annotation) else ():
        if typing.get_origin(arg) is typing.Annotated:
            model, *metadata = typing.get_args(arg)
            out.update({m.tag: model for m in metadata if isinstance(m, Tag)})
    return out


def _tag_field(model: type[BaseModel]) -> str:
    """The field a variant of a discriminated section is told apart by: the Literal one with a single value."""
    literal = [name for name, f in model.model_fields.items() if typing.get_origin(f.annotation) is typing.Literal
               and len(typing.get_args(f.annotation)) == 1]  # fmt: skip
    return literal[0] if literal else "type"


def _is_union(annotation: Any) -> bool:
    return isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union


def _find_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) is typing.Annotated:
        return _find_model(typing.get_args(annotation)[0])
    if _is_union(annotation):
        for arg in typing.get_args(annotation):
            if (model := _find_model(arg)) is not None:
                return model
    return None


def _list_item(annotation: Any) -> Any:
    for candidate in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(candidate) is list:
            return typing.get_args(candidate)[0]
    return None
