"""The render/profile request: a pydantic schema, YAML loading and `--set a.b=value` overrides.

Every error is a `VidrtError` whose single line names the offending key (and value).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vidrt.core.dtypes import DTYPE_NAMES
from vidrt.core.errors import VidrtError
from vidrt.models.specs import SPECS, get_spec


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Strict):
    family: str
    path: str
    dtype: Literal[DTYPE_NAMES] = "float32"
    motion_adapter: str | None = None  # AnimateDiff: MotionAdapter folder or hub id
    allow_pickle: bool = False         # load .bin/.pt weights (runs pickle: only for trusted files)

    @field_validator("family")
    @classmethod
    def _known_family(cls, value: str) -> str:
        if value not in SPECS:
            raise ValueError(f"unknown family; known: {', '.join(SPECS)}")
        return value


class SlicingChunks(_Strict):
    frames: int | None = Field(default=None, ge=1)
    tokens: int | None = Field(default=None, ge=1)
    positions: int | None = Field(default=None, ge=1)


class MemoryConfig(_Strict):
    budget: str | None = None
    slicing: Literal["auto", "off"] | SlicingChunks = "auto"
    offload: Literal["none", "model", "group", "shard"] = "none"   # shard: FSDP2 over torchrun ranks
    vae_tiling: Literal["auto", "on", "off"] = "auto"
    attention: Literal["auto", "sdpa", "xformers"] = "auto"   # auto: xformers on CUDA when installed

    @field_validator("slicing", "vae_tiling", mode="before")
    @classmethod
    def _yaml_booleans(cls, value, info):
        """YAML reads a bare `off`/`on` as a boolean: map it back to the word the user wrote."""
        if isinstance(value, bool):
            return ("auto" if info.field_name == "slicing" else "on") if value else "off"
        return value

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def slicing_chunks(self) -> SlicingChunks | None:
        """None when slicing is off; chunk sizes otherwise (a None size: chosen at call time)."""
        if self.slicing == "off":
            return None
        return SlicingChunks() if self.slicing == "auto" else self.slicing


class AccelerationConfig(BaseModel):
    """`policy` names one step policy or a list to compose; other keys are that policy's settings."""

    model_config = ConfigDict(extra="allow", frozen=True)
    policy: str | list[str] = "none"

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class LongConfig(_Strict):
    window: int | None = Field(default=None, ge=1)
    overlap: int | None = Field(default=None, ge=0)
    # None = auto: on an accelerator, text-to-video runs keep the pipeline's loop tensors on the host
    loop_on_host: bool | None = None


class OutputConfig(_Strict):
    path: str = "out/video.mp4"
    fps: int = Field(default=8, ge=1, le=240)


class RenderConfig(_Strict):
    model: ModelConfig
    prompt: str
    negative_prompt: str = ""
    image: str | None = None
    frames: int | None = Field(default=None, ge=1)  # None: the model's native frame count
    height: int = Field(ge=8)
    width: int = Field(ge=8)
    steps: int = Field(default=20, ge=1)
    guidance: float = Field(default=5.0, ge=0)
    seed: int = 0
    memory: MemoryConfig = MemoryConfig()
    acceleration: AccelerationConfig = AccelerationConfig()
    long: LongConfig | None = None
    devices: list[str] = ["auto"]
    output: OutputConfig = OutputConfig()

    @field_validator("devices")
    @classmethod
    def _devices(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("needs at least one device (or 'auto')")
        for dev in value:
            if dev != "auto" and not (dev == "cpu" or dev == "cuda" or dev.startswith("cuda:")):
                raise ValueError(f"unknown device {dev!r} (use auto, cpu, cuda or cuda:N)")
        return value

    @model_validator(mode="after")
    def _family_rules(self) -> RenderConfig:
        spec = get_spec(self.model.family)
        problems = [spec.size_error(key, getattr(self, key)) for key in ("height", "width")]
        problems.append(spec.frames_error(self.frames) if self.frames is not None else None)
        if spec.needs_image and not self.image:
            problems.append(f"image: the {spec.family} family needs a conditioning image")
        for problem in problems:
            if problem:
                raise ValueError(problem)
        return self


def _format_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    # drop pydantic's union-branch tags such as "literal['auto','off']" or "function-after[...]"
    loc = ".".join(str(p) for p in err["loc"] if "[" not in str(p))
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return f"config: unknown key {loc!r}"
    if err["type"] == "missing":
        return f"config: missing key {loc!r}"
    if ":" in msg.split(" ")[0]:  # our own messages already start with the key
        return f"config: {msg}"
    value = err.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    return f"config: {loc or 'config'}: {msg}{shown}"


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
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {} if child is None or isinstance(child, str) else child
            node[part] = child
        node = child
    node[parts[-1]] = value


def parse_config(data: Any, overrides: list[str] | tuple[str, ...] = ()) -> RenderConfig:
    if not isinstance(data, dict):
        raise VidrtError("config: the file must hold a mapping of keys (model, prompt, frames, ...)")
    data = dict(data)
    for assignment in overrides:
        set_override(data, assignment)
    try:
        return RenderConfig.model_validate(data)
    except ValidationError as exc:
        raise VidrtError(_format_error(exc)) from None
    except VidrtError:
        raise


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RenderConfig:
    path = Path(path)
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
    return parse_config(data, overrides)
