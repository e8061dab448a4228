"""Concrete memory decisions for one run: what the planner chooses, what the simulator evaluates and what the
runner applies (vidrt.run.memory_setup)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from vidrt.core.errors import VidrtError
from vidrt.engine.offload import OFFLOAD_MODES
from vidrt.engine.slicing import SlicingConfig


@dataclass
class MemorySettings:
    """Concrete memory decisions for one run (what the planner chooses, what simulate evaluates)."""

    slicing: bool = False
    chunk_frames: int | None = None
    chunk_tokens: int | None = None
    chunk_positions: int | None = None
    offload: str = "none"              # none | model | group | shard (several GPUs)
    text_encoder: str = "accelerator"  # accelerator | cpu
    vae_tiling: bool = False
    granularity: str = "auto"          # offload group: auto | block | leaf
    disk: bool = False                 # offload group: the weights stream from files on disk, not host memory
    weights: str = "native"            # native | fp8 | fp8_e5m2 (stored in fp8, lossy) | gguf (model.weights' file)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        sl = "off"
        if self.slicing:
            parts = [f"{k}={getattr(self, 'chunk_' + k) or 'auto'}" for k in ("frames", "tokens", "positions")]
            sl = ",".join(parts)
        offload = self.offload
        if self.offload == "group":
            how = ([f"{self.granularity} level"] if self.granularity != "auto" else []) + (["from disk"] if self.disk else [])
            offload = f"group ({', '.join(how)})" if how else "group"
        weights = f"; weights {self.weights} (lossy)" if self.weights != "native" else ""
        return (f"slicing {sl}; offload {offload}; text encoder on {self.text_encoder}; "
                f"vae tiling {'on' if self.vae_tiling else 'off'}{weights}")


def fixed_settings(config) -> dict[str, Any]:
    """The settings a config fixes (its memory keys not left at "auto"), as MemorySettings fields."""
    mem = getattr(config, "memory", None)
    out: dict[str, Any] = {}
    if mem is None:
        return out
    if mem.slicing != "auto":
        chunks = mem.slicing_chunks()
        out["slicing"] = chunks is not None
        if chunks is not None:
            out.update(chunk_frames=chunks.frames, chunk_tokens=chunks.tokens, chunk_positions=chunks.positions)
    if mem.offload != "auto":
        if mem.offload not in OFFLOAD_MODES:
            raise VidrtError(f"memory.offload: {mem.offload!r} is not one of {', '.join(OFFLOAD_MODES)}")
        out["offload"] = mem.offload
    if mem.offload_granularity != "auto":
        out["granularity"] = mem.offload_granularity
    if mem.vae_tiling != "auto":
        out["vae_tiling"] = mem.vae_tiling == "on"
    if mem.text_encoder != "auto":
        out["text_encoder"] = mem.text_encoder
    if mem.offload_disk != "auto":
        out["disk"] = mem.offload_disk != "off"
        if out["disk"] and out.get("offload", "group") != "group":
            raise VidrtError(f"memory.offload_disk: streaming from disk is a way of offload group, not of "
                             f"offload {out['offload']}; set memory.offload: group (or auto), or offload_disk: off")
        if out["disk"]:
            out["offload"] = "group"
    if mem.weights != "auto":
        out["weights"] = mem.weights
        if mem.weights != "native" and out.get("offload") == "shard":
            raise VidrtError(f"memory.weights: {mem.weights} storage is not combined with offload shard (FSDP2 "
                             "shards the full-precision weights); choose weights native or another offload")
    file = getattr(config.model, "weights", None)
    if file and str(file).lower().endswith(".gguf"):
        out["weights"] = "gguf"           # the file decides how the denoiser's weights are stored
        if out.get("offload") == "shard":
            raise VidrtError("memory.offload: shard splits full-precision weights over GPUs, and model.weights is a "
                             "GGUF file; choose offload none, model or group")
    return out


def settings_from_config(config) -> MemorySettings:
    """The settings of a run without a device limit: what the config fixes; keys left at "auto" off / none
    (slicing and streaming only cost time where everything fits)."""
    return MemorySettings(**fixed_settings(config))


def slicing_config(s: MemorySettings) -> SlicingConfig | None:
    return SlicingConfig(s.chunk_frames, s.chunk_tokens, s.chunk_positions) if s.slicing else None
