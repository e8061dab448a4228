"""The render/profile request as a pydantic schema: every key, its type, its bounds and the family rules.
Nothing here imports torch: a bad config answers at once."""
from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from vidrt.core.dtypes import DTYPE_NAMES
from vidrt.core.units import number_word, parse_bytes
from vidrt.models.specs import SPECS, get_spec

SEED_MAX = 2 ** 64 - 1      # torch.Generator.manual_seed takes 0 .. 2**64-1 (negative seeds wrap onto those)
GUIDANCE_MAX = 100.0        # far above any useful CFG scale; larger ones overflow the loop into a black video


def _did_you_mean(word: str, known) -> str:
    close = difflib.get_close_matches(str(word), [str(k) for k in known], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _words_as_numbers(value):
    """YAML 1.1 (PyYAML) reads 1e9, 5e-3 and inf as words: numbers in the acceleration settings."""
    if isinstance(value, dict):
        return {k: _words_as_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_words_as_numbers(v) for v in value]
    return number_word(value)


def _numbers(value) -> list[float]:
    if isinstance(value, (list, tuple, dict)):
        return [n for v in (value.values() if isinstance(value, dict) else value) for n in _numbers(v)]
    return [float(value)] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Strict):
    family: str
    path: str
    dtype: Literal[DTYPE_NAMES] = "float32"
    motion_adapter: str | None = None  # AnimateDiff: MotionAdapter folder or hub id
    allow_pickle: bool = False         # load .bin/.pt weights (runs pickle: only for trusted files)
    # one .gguf (quantized) or .safetensors file holding the denoiser, used with model.path's configs and other
    # components in place of its denoiser weights (vidrt.models.single_file)
    weights: str | None = None
    # the second expert's file (Wan 2.2 A14B: transformer_2, the low-noise steps), with `weights` for the first
    weights_2: str | None = None

    @field_validator("family")
    @classmethod
    def _known_family(cls, value: str) -> str:
        if value not in SPECS:
            raise ValueError(f"unknown family; known: {', '.join(SPECS)}{_did_you_mean(value, SPECS)}")
        return value


class SlicingChunks(_Strict):
    frames: int | None = Field(default=None, ge=1)
    tokens: int | None = Field(default=None, ge=1)
    positions: int | None = Field(default=None, ge=1)


class MemoryConfig(_Strict):
    """Where memory goes. Keys left at "auto" are decided for the run: with a budget (default "auto": the
    accelerator's free memory less a headroom) by the planner, which picks the fastest predicted settings that
    fit (vidrt.memory.planner); where there is no device limit (a CPU run, or `budget: null`) as off / none.

    budget: auto | a size (8GiB, 12GB) | null;
    host_budget: auto (this machine's free memory less a headroom) | a size | null: the host memory a plan may
        hold (offloaded and pinned weights, a CPU text encoder); plans that need more are not chosen;
    offload_disk: auto | on | off | a folder: offload group streams the weights from safetensors files on disk
        instead of host memory (auto: only when no plan fits host_budget otherwise; the files go to a fresh
        folder beside the output, or inside the folder given, and are deleted after the render);
    slicing: auto | off | {frames, tokens, positions} (chunk sizes; a key left out: sized at call time);
    offload: auto | none | model | group | shard (FSDP2 over torchrun ranks);
    offload_granularity: auto | block | leaf (offload group: stream block by block or layer by layer);
    vae_tiling: auto | on | off;
    text_encoder: auto | accelerator (released after encoding) | cpu (encodes on the host);
    weights: auto | native | fp8 | fp8_e5m2: how the denoiser's weights are stored between calls; fp8 halves
        their bytes (what stays resident and what streams) and computes in the model's dtype, and is lossy
        (docs/WEIGHTS.md); auto: native, and fp8 only where no plan with native weights fits the budget;
    attention: auto (xformers on CUDA when installed) | sdpa | xformers;
    kernels: torch (the model's own arithmetic) | auto | triton (vidrt's fused kernels in sliced blocks, CUDA);
    compile: regional torch.compile of the denoiser's repeated blocks.
    """

    budget: str | None = "auto"
    host_budget: str | None = "auto"
    offload_disk: str = "auto"
    slicing: Literal["auto", "off"] | SlicingChunks = "auto"
    offload: Literal["auto", "none", "model", "group", "shard"] = "auto"
    offload_granularity: Literal["auto", "block", "leaf"] = "auto"
    vae_tiling: Literal["auto", "on", "off"] = "auto"
    text_encoder: Literal["auto", "accelerator", "cpu"] = "auto"
    weights: Literal["auto", "native", "fp8", "fp8_e5m2"] = "auto"
    attention: Literal["auto", "sdpa", "xformers"] = "auto"
    kernels: Literal["torch", "auto", "triton"] = "torch"
    compile: bool = False

    @field_validator("budget", "host_budget")
    @classmethod
    def _size(cls, value: str | None, info) -> str | None:
        if value is not None and str(value).strip().lower() != "auto":
            parse_bytes(value, f"memory.{info.field_name}")   # a VidrtError naming the key when it is no size
        return value

    @field_validator("offload_disk", mode="before")
    @classmethod
    def _disk(cls, value) -> str:
        if isinstance(value, bool):          # YAML reads a bare on/off as a boolean
            return "on" if value else "off"
        if value is None or not str(value).strip():
            raise ValueError("memory.offload_disk: give auto, on, off or a folder")
        return str(value)

    def disk_folder(self) -> str | None:
        """The folder offload_disk names (None for auto / on / off)."""
        return None if self.offload_disk in ("auto", "on", "off") else self.offload_disk

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

    @model_validator(mode="before")
    @classmethod
    def _number_words(cls, data):
        if isinstance(data, dict):
            return {k: v if k == "policy" else _words_as_numbers(v) for k, v in data.items()}
        return data

    @model_validator(mode="after")
    def _finite_settings(self) -> AccelerationConfig:
        for key, value in (self.model_extra or {}).items():
            for number in _numbers(value):
                if not math.isfinite(number):
                    raise ValueError(f"acceleration.{key}: {value!r} is not a finite number")
        return self

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class LongConfig(_Strict):
    window: int | None = Field(default=None, ge=1)
    overlap: int | None = Field(default=None, ge=0)
    # None = auto: on an accelerator, text-to-video runs keep the pipeline's loop tensors on the host
    loop_on_host: bool | None = None
    # FreeNoise-style noise reuse across windows (vidrt.engine.long.reschedule_noise): None = the family's
    # default (AnimateDiff on, Wan and I2VGen-XL off), true / false to choose
    noise_reschedule: bool | None = None
    # decoding a causal VAE (Wan) in re-anchored windows of this many frames (vidrt.models.wan_vae): auto = what
    # the model declares beside its weights (vidrt.json), else the whole sequence at once; off; or frames
    decode_window: Literal["auto", "off"] | int = "auto"
    decode_overlap: int | None = Field(default=None, ge=0)   # frames two decode windows share (cross-faded)

    @field_validator("decode_window", mode="before")
    @classmethod
    def _decode_window(cls, value):
        if isinstance(value, bool):          # YAML reads a bare off as a boolean
            return "auto" if value else "off"
        if value in ("auto", "off"):
            return value
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or value < 2:
            raise ValueError(f"long.decode_window: give auto, off or a number of frames (at least 2), not {value!r}")
        return value


class OutputConfig(_Strict):
    path: str = "out/video.mp4"
    fps: int = Field(default=8, ge=1, le=240)


class RenderConfig(_Strict):
    model: ModelConfig
    prompt: str
    negative_prompt: str = ""
    image: str | None = None
    input_video: str | None = None   # video-to-video: the clip to transform (its frames, resized to height x width)
    strength: float = Field(default=0.7, gt=0, le=1, allow_inf_nan=False)   # video-to-video: how much changes
    frames: int | None = Field(default=None, ge=1)  # None: the model's native frame count (input_video: its length)
    height: int = Field(ge=8)
    width: int = Field(ge=8)
    steps: int = Field(default=20, ge=1)
    guidance: float = Field(default=5.0, ge=0, le=GUIDANCE_MAX, allow_inf_nan=False)
    seed: int = 0
    memory: MemoryConfig = MemoryConfig()
    acceleration: AccelerationConfig = AccelerationConfig()
    long: LongConfig | None = None
    devices: list[str] = ["auto"]
    output: OutputConfig = OutputConfig()
    _source: Path | None = PrivateAttr(default=None)          # the YAML file (load_config), for messages
    _overrides: tuple[str, ...] = PrivateAttr(default=())     # its --set overrides, for the resume command

    @field_validator("seed")
    @classmethod
    def _seed(cls, value: int) -> int:
        if not 0 <= value <= SEED_MAX:
            raise ValueError(f"seed: {value} is outside 0..{SEED_MAX} (the seeds torch.Generator takes)")
        return value

    @property
    def source(self) -> Path | None:
        return self._source

    @property
    def overrides(self) -> tuple[str, ...]:
        return self._overrides

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
        if self.image and not (spec.needs_image or spec.optional_image):
            problems.append(f"image: the {spec.family} family renders from text only; remove image")
        if self.input_video and not spec.video_to_video:
            problems.append(f"input_video: the {spec.family} family has no video-to-video pipeline; remove "
                            "input_video")
        if self.input_video and int(self.steps * self.strength) < 1:
            problems.append(f"strength: {self.strength} x {self.steps} steps leaves no step to run; raise strength "
                            "or steps")
        if self.input_video and self.image:
            problems.append("input_video: a video-to-video render takes no image; remove image or input_video")
        if self.model.motion_adapter and spec.family != "animatediff":
            problems.append(f"model.motion_adapter: only the animatediff family takes a motion adapter, "
                            f"not {spec.family}; remove the key")
        for key in ("weights", "weights_2"):
            weights = getattr(self.model, key)
            if weights and Path(weights).suffix.lower() not in (".gguf", ".safetensors"):
                problems.append(f"model.{key}: {weights} is neither a .gguf nor a .safetensors file")
            if weights and Path(weights).suffix.lower() == ".gguf" and self.memory.weights.startswith("fp8"):
                problems.append(f"memory.weights: {self.memory.weights} stores native weights in fp8, and the GGUF "
                                f"file in model.{key} is already quantized; remove memory.weights or set it to auto")
        if self.model.weights_2 and not self.model.weights:
            problems.append("model.weights_2: the second expert's file goes with the first's; give model.weights "
                            "too")
        elif self.model.weights_2 and (Path(self.model.weights_2).suffix.lower()
                                       != Path(self.model.weights).suffix.lower()):
            problems.append(f"model.weights_2: {self.model.weights_2} is not the kind of file model.weights is "
                            f"({Path(self.model.weights).suffix}); give both experts as .gguf or both as "
                            ".safetensors")
        for problem in problems:
            if problem:
                raise ValueError(problem)
        return self
