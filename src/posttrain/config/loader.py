"""Reading parameter files: YAML, overlays deep-merged in order, validation with errors that name
the key, the file that set it and what is allowed."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from posttrain.config.base import ConfigError
from posttrain.config.params import Params

DEFAULT_PARAMS = Path("params.yaml")


def deep_merge(base: dict, overlay: dict, origin: dict[str, str], source: str, prefix: str = "") -> dict:
    """Merge `overlay` into a copy of `base` (dicts recursively, everything else replaced),
    recording in `origin` which file set each dotted key."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value, origin, source, dotted + ".")
        else:
            out[key] = copy.deepcopy(value)
            _mark(origin, dotted, value, source)
    return out


def _mark(origin: dict[str, str], dotted: str, value: Any, source: str) -> None:
    origin[dotted] = source
    if isinstance(value, dict):
        for k, v in value.items():
            _mark(origin, f"{dotted}.{k}", v, source)


def read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"parameter file {path} does not exist") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(data).__name__}")
    return data


def validate(raw: dict, origin: dict[str, str] | None = None) -> Params:
    """Validate a merged parameter dict; raise ConfigError naming every bad key."""
    origin = origin or {}
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_explain(err, origin)) from None


def _explain(err: ValidationError, origin: dict[str, str]) -> str:
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        dotted = ".".join(loc)
        where = _origin_of(loc, origin)
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(loc[:-1])
            lines.append(f"unknown key '{dotted}'{where}; allowed here: {', '.join(allowed)}")
        else:
            got = e.get("input")
            got = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
            lines.append(f"'{dotted}'{where}: {e['msg']}{got}")
    return "invalid parameters:\n  " + "\n  ".join(lines)


def _origin_of(loc: list[str], origin: dict[str, str]) -> str:
    for n in range(len(loc), 0, -1):
        src = origin.get(".".join(loc[:n]))
        if src:
            return f" in {src}"
    return ""


def _allowed_keys(loc: list[str]) -> list[str]:
    """Field names of the schema section at `loc` (list indices and dict keys skipped)."""
    model: type[BaseModel] = Params
    for part in loc:
        field = model.model_fields.get(part)
        if field is None:
            continue  # a list index or a free-form dict key: stay on the item's model
        inner = model_in(field.annotation)
        if inner is None:
            return []
        model = inner
    return sorted(model.model_fields)


def model_in(annotation: Any) -> type[BaseModel] | None:
    """The schema model inside a field's type (`X`, `X | None`, `list[X]`, `dict[str, X]`), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = model_in(arg)
        if found is not None:
            return found
    return None


def load_params(files: list[str | Path] | None = None) -> Params:
    """Load `params.yaml` and overlays in order (later files win) and validate the result."""
    files = [Path(f) for f in (files or [DEFAULT_PARAMS])]
    merged: dict = {}
    origin: dict[str, str] = {}
    for f in files:
        merged = deep_merge(merged, read_yaml(f), origin, str(f))
    return validate(merged, origin)


def section(params: Params, name: str) -> dict:
    """The resolved section as plain data, as recorded in manifests."""
    return getattr(params, name).model_dump(mode="json")
