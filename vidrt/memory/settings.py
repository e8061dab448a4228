"""Concrete memory decisions for one run: what the planner chooses, what the simulator evaluates and what the
runner applies (vidrt.run.memory_setup)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from vidrt.core.errors import VidrtError
from vidrt.engine.offload import OFFLOAD_MODES
from vidrt.engine.slicing import SlicingConfig
from vidrt.engine.vae import VaeConfig


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        sl = "off"
        if self.slicing:
            parts = [f"{k}={getattr(self, 'chunk_' + k) or 'auto'}" for k in ("frames", "tokens", "positions")]
            sl = ",".join(parts)
        return (f"slicing {sl}; offload {self.offload}; text encoder on {self.text_encoder}; "
                f"vae tiling {'on' if self.vae_tiling else 'off'}")


def settings_from_config(config) -> MemorySettings:
    mem = getattr(config, "memory", None)
    s = MemorySettings()
    if mem is None:
        return s
    chunks = mem.slicing_chunks()
    s.slicing = chunks is not None
    if chunks is not None:
        s.chunk_frames, s.chunk_tokens, s.chunk_positions = chunks.frames, chunks.tokens, chunks.positions
    s.offload = str(getattr(mem, "offload", "none") or "none")
    if s.offload not in OFFLOAD_MODES:
        raise VidrtError(f"memory.offload: {s.offload!r} is not one of {', '.join(OFFLOAD_MODES)}")
    s.vae_tiling = VaeConfig(mem.vae_tiling, int(config.height), int(config.width)).tiles
    te = getattr(mem, "text_encoder", None)
    if te in ("cpu", "accelerator"):
        s.text_encoder = te
    return s


def slicing_config(s: MemorySettings) -> SlicingConfig | None:
    return SlicingConfig(s.chunk_frames, s.chunk_tokens, s.chunk_positions) if s.slicing else None
