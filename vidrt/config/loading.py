"""A config from YAML and `--set a.b=value` overrides, with every error one line naming the key (and a "did
you mean" for a misspelt key or value); relative paths resolved beside the config file."""
from __future__ import annotations

import copy
import os
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from vidrt.config.schema import (AccelerationConfig, LongConfig, MemoryConfig, ModelConfig, OutputConfig,
                                 RenderConfig, SlicingChunks, _did_you_mean)
from vidrt.core.errors import VidrtError

PATH_KEYS = (("model", "path"), ("model", "motion_adapter"), ("image",))   # resolved beside the config file


def _submodel(annotation) -> type[BaseModel] | None:
    """The pydantic model a field holds (also inside `X | None` or `Literal[...] | X`), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _submodel(arg)
        if found is not None:
            return found
    return None


def _model_at(path: list[str]) -> type[BaseModel] | None:
    """The schema's model at a dotted key path (None past a leaf or an unknown key)."""
    model: type[BaseModel] | None = RenderConfig
    for part in path:
        field = model.model_fields.get(part) if model is not None else None
        if field is None:
            return None
        model = _submodel(field.annotation)
    return model


def _key_path(loc) -> list[str]:
    """pydantic's error location without its union-branch tags ("literal['auto','off']", "SlicingChunks")."""
    names = {m.__name__ for m in (RenderConfig, ModelConfig, SlicingChunks, MemoryConfig, AccelerationConfig,
                                  LongConfig, OutputConfig)}
    return [str(p) for p in loc if "[" not in str(p) and str(p) not in names]


def _format_error(exc: ValidationError) -> str:
    errors = exc.errors()
    # a misspelt key is both "unknown" and (for required keys) "missing": name the misspelling
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    path = _key_path(err["loc"])
    loc = ".".join(path)
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        parent = _model_at(path[:-1])
        known = [f"{'.'.join(path[:-1] + [k])}" for k in (parent.model_fields if parent is not None else ())]
        return f"config: unknown key {loc!r}{_did_you_mean(loc, known)}"
    if err["type"] == "missing":
        return f"config: missing key {loc!r}"
    if ":" in msg.split(" ")[0]:  # our own messages already start with the key
        return f"config: {msg}"
    value = err.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    hint = ""
    if err["type"] == "literal_error" and isinstance(value, str):
        hint = _did_you_mean(value, [w.strip(" '") for w in
                                     err.get("ctx", {}).get("expected", "").replace(" or ", ",").split(",")])
    return f"config: {loc or 'config'}: {msg}{shown}{hint}"


def set_override(data: dict, assignment: str) -> None:
    """Apply one `a.b=value` override in place; the value is parsed as YAML (so 5, 1.5, true, [a] work)."""
    if "=" not in assignment:
        raise VidrtError(f"--set: {assignment!r} is not key=value")
    key, raw = assignment.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise VidrtError(f"--set: {assignment!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if isinstance(child, dict):
            node = child
            continue
        where = ".".join(parts[: i + 1])
        parent = _model_at(parts[:i])
        if parent is not None and part in parent.model_fields and _model_at(parts[: i + 1]) is None:
            raise VidrtError(f"--set: {key.strip()}: {where} is a single value, not a group of keys; set it with "
                             f"--set {where}=VALUE")
        if child is not None and not isinstance(child, str):   # a word ("auto") may become a mapping
            raise VidrtError(f"--set: {key.strip()}: {where} holds {child!r}, not a group of keys")
        child = {}
        node[part] = child
        node = child
    node[parts[-1]] = value


def parse_config(data: Any, overrides: list[str] | tuple[str, ...] = (), *, folder: Path | None = None) -> RenderConfig:
    """A validated config from a mapping and `--set` overrides; `folder`: the config file's folder, against
    which relative paths are resolved (`load_config`)."""
    if not isinstance(data, dict):
        raise VidrtError("config: the file must hold a mapping of keys (model, prompt, frames, ...)")
    data = copy.deepcopy(data)   # overrides never change the caller's mapping
    for assignment in overrides:
        set_override(data, assignment)
    if folder is not None:
        overridden = {tuple(p for p in a.split("=", 1)[0].strip().split(".") if p) for a in overrides}
        _resolve_paths(data, folder, overridden)
    try:
        cfg = RenderConfig.model_validate(data)
    except ValidationError as exc:
        raise VidrtError(_format_error(exc)) from None
    cfg._overrides = tuple(overrides)
    return cfg


def _resolve_paths(data: dict, folder: Path, overridden: set[tuple[str, ...]]) -> None:
    """Relative PATH_KEYS from the file: beside it, else in the working directory (from --set: the other way
    round), else in the folders above the config (samples/ names paths from the project's root). Found nowhere:
    kept as written (a hub id, or a missing path `check_request` reports with the places it looked)."""
    for keys in PATH_KEYS:
        node = data
        for k in keys[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
        value = node.get(keys[-1]) if isinstance(node, dict) else None
        if not isinstance(value, str) or not value or Path(value).expanduser().is_absolute():
            continue
        here, beside = Path(value), folder / value
        first = [here, beside] if keys in overridden else [beside, here]
        found = next((p for p in [*first, *(p / value for p in folder.parents)] if p.exists()), None)
        if found is not None and found is not here:
            node[keys[-1]] = os.path.abspath(found)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RenderConfig:
    path = Path(path)
    if path.is_dir():
        raise VidrtError(f"config: {path} is a folder; give a YAML file such as samples/tiny.yaml")
    if not path.is_file():
        raise VidrtError(f"config: no such file {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise VidrtError(f"config: YAML syntax error in {path}{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise VidrtError(f"config: cannot read {path}: {exc}") from None
    cfg = parse_config(data, overrides, folder=path.resolve().parent)
    cfg._source = path
    return cfg
