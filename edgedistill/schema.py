"""Typed YAML: strict pydantic models (an unknown key fails with the valid ones listed, a wrong type
names the key), YAML read with line and column on a syntax error, and ``--set a.b=c`` overrides
type-checked against the model. Recipes (config.py) and targets (hardware.py) are built on it."""

from __future__ import annotations

import json
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from edgedistill.errors import ConfigError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def read_yaml(path: Path) -> Any:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist.") from None
    except OSError as e:
        raise ConfigError(f"Cannot read {path}: {e.strerror}.") from None
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise ConfigError(f"{path} is not valid YAML ({where}): {e.problem}.") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}.") from None


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _annotation_at(model: type[BaseModel], loc: tuple) -> Any:
    """The annotation of the field ``loc`` names (``model`` for ``()``), or None when loc leaves
    the models."""
    current: Any = model
    for part in loc:
        inner = _model_in(current)
        field = inner.model_fields.get(part) if _is_model(inner) else None
        if field is None:
            return None
        current = field.annotation
    return current


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str] | None:
    """The valid keys of the (sub)model reached by ``loc``, or None when loc leaves the models."""
    inner = _model_in(_annotation_at(model, loc))
    return list(inner.model_fields) if _is_model(inner) else None


def _is_mapping_at(model: type[BaseModel], loc: tuple) -> bool:
    """Whether ``loc`` names a field of free-form names (``dict[str, ...]``, e.g. data.train_sets),
    whose keys a ``--set`` may add."""
    return bool(loc) and getattr(_annotation_at(model, loc), "__origin__", None) is dict


def _model_in(annotation: Any) -> Any:
    """The BaseModel inside Optional[...] / Union[...], else the annotation itself."""
    if _is_model(annotation):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        if _is_model(arg):
            return arg
    return annotation


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _without_branches(model: type[BaseModel], loc: tuple) -> tuple[tuple, bool]:
    """``loc`` without the names pydantic gives a union's branches (``train.epochs.float``,
    ``eval.judge.JudgeConfig.n_ctx``), and whether it had any."""
    out: list = []
    for part in loc:
        here = _annotation_at(model, tuple(out))
        inner = _model_in(here)
        if _is_union(here) and isinstance(part, str) and not (_is_model(inner) and part in inner.model_fields):
            continue
        out.append(part)
    return tuple(out), len(out) < len(loc)


def _merge_union_branches(model: type[BaseModel], errors: list[dict]) -> list[dict]:
    """One error per key where a value failed every branch of a union (``epochs: float | auto``):
    pydantic reports one per branch. Where the value took one branch (a section given as a
    mapping) the errors inside it stand, and the other branches' type mismatches go."""
    normal = [(e, *_without_branches(model, tuple(e["loc"]))) for e in errors]
    inside = {loc[:i] for _, loc, branched in normal if branched for i in range(len(loc))}
    merged: list[dict] = []
    for e, loc, branched in normal:
        if branched and loc in inside:
            continue
        last = merged[-1] if merged else None
        if branched and last and last.get("_branched") and tuple(last["loc"]) == loc:
            last["msg"] += ", or " + e["msg"].removeprefix("Input should be ")
            continue
        merged.append({**e, "loc": loc, "_branched": branched})
    return merged


def format_validation_error(err: ValidationError, model: type[BaseModel], source: str) -> str:
    lines = [f"{source} does not validate:"]
    for e in _merge_union_branches(model, err.errors()):
        loc = tuple(e["loc"])
        dotted = ".".join(str(p) for p in loc)
        if e["type"] == "extra_forbidden":
            valid = _fields_at(model, loc[:-1]) or []
            parent = ".".join(str(p) for p in loc[:-1]) or "the top level"
            lines.append(f"  unknown key '{dotted}'; valid keys under {parent}: {', '.join(valid)}")
        elif e["type"] == "missing":
            lines.append(f"  missing key '{dotted}'")
        elif e["type"] == "secret_in_url":  # never echo a credential back
            lines.append(f"  {dotted}: {e['msg']}")
        else:
            shown = e.get("input")
            if isinstance(shown, dict):  # a whole section (a check across its keys): the message says it
                lines.append(f"  {dotted}: {e['msg']}")
                continue
            shown = repr(shown) if not isinstance(shown, list) else "list"
            lines.append(f"  {dotted}: {e['msg']} (got {shown})")
    return "\n".join(lines)


def validate(model: type[BaseModel], data: Any, source: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must be a YAML mapping of keys, got {type(data).__name__}.")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, model, source)) from None


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r} is not KEY=VALUE (e.g. --set train.max_steps=50).")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"--set {item!r}: {key!r} is not a dotted key.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(model: type[BaseModel], data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b=c`` overrides to a raw recipe dict; unknown keys fail with the valid ones. A
    section of free-form names takes any name (``data.train_sets.more=extra.jsonl``)."""
    data = json.loads(json.dumps(data))  # deep copy, plain types
    for item in overrides:
        path, value = parse_override(item)
        valid = _fields_at(model, tuple(path[:-1]))
        if (valid is None or path[-1] not in valid) and not _is_mapping_at(model, tuple(path[:-1])):
            parent = ".".join(path[:-1]) or "the top level"
            known = ", ".join(valid) if valid else "(none: not a section)"
            raise ConfigError(
                f"--set {item}: unknown key '{'.'.join(path)}'; valid keys under {parent}: {known}."
            )
        node = data
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = value
    return data


_BOUND_SIGNS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def field_bounds(annotation: Any, metadata: list = ()) -> list[str]:
    """The bounds a field enforces, as ``>= 1`` / ``< 0.5``: from its Field(ge=..., ...), and from
    those of the types inside it (``list[Annotated[int, Field(ge=1)]]``, a union's float branch)."""
    found = []
    for m in list(metadata) + list(getattr(annotation, "__metadata__", ())):
        for attr, sign in _BOUND_SIGNS.items():
            value = getattr(m, attr, None)
            if value is not None:
                found.append(f"{sign} {value:g}" if isinstance(value, float) else f"{sign} {value}")
        found += field_bounds(None, getattr(m, "metadata", ()))  # a FieldInfo inside Annotated
    for arg in typing.get_args(annotation):
        if not isinstance(arg, (str, int, float)):  # Literal values have no bounds
            found += field_bounds(arg)
    return list(dict.fromkeys(found))


def bundled(kind: Literal["profiles", "targets"]) -> Path:
    return Path(str(resources.files("edgedistill") / kind))
