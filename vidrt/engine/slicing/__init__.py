"""Feature slicing (Streamlined Inference): run a video denoiser's operators on chunks of the axis they are
independent along, so their intermediates exist one chunk at a time. Exact (sliced == unsliced).

    vidrt.enable_slicing(pipe_or_denoiser, SlicingConfig(chunk_tokens=4096))   # or chunk_*=... keywords
    vidrt.disable_slicing(pipe_or_denoiser)

Modules are changed in place (a reference to the denoiser taken before keeps running sliced), innermost under
any hook (vidrt.engine.attach), and `disable_slicing` restores every forward exactly. Which submodule is
spatial / temporal / token-wise comes from the model family's adapter (vidrt.models).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from vidrt.engine import attach
from vidrt.engine.slicing import groups, unet, wan
from vidrt.engine.kernels import BACKENDS
from vidrt.engine.slicing.auto import auto_chunk_positions, auto_chunk_samples, auto_chunk_tokens, on_accelerator
from vidrt.models import adapter_for, denoisers_of

FEATURE = "slicing"

__all__ = ["SlicingConfig", "SlicingState", "chunks_for", "disable_slicing", "enable_slicing", "slicing_state"]


@dataclass(frozen=True)
class SlicingConfig:
    """Chunk sizes; None lets vidrt choose from the shapes of each call (vidrt.engine.slicing.auto).

    chunk_frames: samples (batch x frames) per chunk of a UNet's spatial ops, and frames per chunk of a DiT's
        patch embedding;
    chunk_tokens: query / token rows per chunk of a DiT block (self-attention keeps full K/V);
    chunk_positions: spatial positions per chunk of a UNet's temporal ops;

    kernels: "torch" runs the block's elementwise groups as diffusers writes them (bit-identical); "auto" uses
        vidrt's fused Triton kernels (vidrt.engine.kernels) on CUDA where they apply, "triton" insists;
    accelerator: size automatic chunks for an accelerator (larger floors) or a CPU; None decides from the
        device of each call's input (the simulator, whose fake CPU tensors stand for a GPU, says True).
    """

    chunk_frames: int | None = None
    chunk_tokens: int | None = None
    chunk_positions: int | None = None
    kernels: str = "torch"
    accelerator: bool | None = None

    def __post_init__(self):
        for name in ("chunk_frames", "chunk_tokens", "chunk_positions"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name}: expected a positive integer or None, got {value!r}")
        if self.kernels not in BACKENDS:
            raise ValueError(f"kernels: expected one of {', '.join(BACKENDS)}, got {self.kernels!r}")

    def on_accelerator(self, device) -> bool:
        return self.accelerator if self.accelerator is not None else on_accelerator(device)

    def as_dict(self) -> dict[str, int | None]:
        return {"chunk_frames": self.chunk_frames, "chunk_tokens": self.chunk_tokens,
                "chunk_positions": self.chunk_positions}

    def with_chunks(self, **chunks) -> SlicingConfig:
        return replace(self, **chunks)


@dataclass
class SlicingState:
    """What slicing was enabled with on one denoiser, and how many modules of each kind it changed."""

    config: SlicingConfig
    patched: dict[str, int] = field(default_factory=dict)

    def get(self, key: str, default=None):      # the chunk sizes by name ("chunk_tokens", ...)
        return self.config.as_dict().get(key, default)


def enable_slicing(obj, config: SlicingConfig | None = None, *, chunk_frames: int | None = None,
                   chunk_tokens: int | None = None, chunk_positions: int | None = None) -> dict[str, Any]:
    """Slice `obj`'s denoiser(s) in place (a pipeline or a bare denoiser). Calling it again re-applies with the
    new sizes. Returns a summary: chunk sizes (None = auto at call time) and modules changed per kind."""
    if config is None:
        config = SlicingConfig(chunk_frames, chunk_tokens, chunk_positions)
    summary: dict[str, Any] = {**config.as_dict(), "patched": {}}
    for den in denoisers_of(obj):
        attach.detach(den, FEATURE)
        state = attach.set_state(den, FEATURE, SlicingState(config, _slice_denoiser(den, config)))
        for k, v in state.patched.items():
            summary["patched"][k] = summary["patched"].get(k, 0) + v
    return summary


def _slice_denoiser(den: nn.Module, config: SlicingConfig) -> dict[str, int]:
    roles = adapter_for(den).roles(den)
    modules = dict(den.named_modules())
    counts: dict[str, int] = {}

    def put(module, fn, kind):
        if attach.replace_computation(module, fn, FEATURE, kind=kind):
            counts[kind] = counts.get(kind, 0) + 1

    if roles.token:
        # A DiT: its blocks are token-wise; the model forward handles patch embedding / output projection.
        for name in roles.token:
            put(modules[name], wan.make_block_forward(config), "token-block")
        put(den, wan.make_model_forward(config), "dit-model")
    else:
        for name in roles.spatial:
            put(modules[name], unet.make_spatial_forward(config), "spatial")
        # Operator groups: [upsample ->] cat -> resnet (-> attention) per frame chunk in the up blocks.
        up_blocks = [m for name, m in modules.items() if name and groups.is_groupable_up_block(m)]
        for i, block in enumerate(up_blocks):
            nxt = up_blocks[i + 1] if i + 1 < len(up_blocks) else None
            prev = up_blocks[i - 1] if i > 0 else None
            defer = nxt is not None and block.upsamplers is not None and _follows(den, block, nxt)
            previous = prev.upsamplers if prev is not None and prev.upsamplers is not None and \
                _follows(den, prev, block) else None
            put(block, groups.make_up_block_forward(config, defer, previous), "up-block-group")
    for name in roles.temporal:
        module = modules[name]
        if unet.is_temporal_conv(module):
            put(module, unet.make_temporal_conv_forward(config), "temporal-conv")
        else:
            put(module, unet.make_temporal_transformer_forward(config), "temporal-transformer")
    return counts


def _follows(den: nn.Module, block: nn.Module, nxt: nn.Module) -> bool:
    """True when `nxt` directly follows `block` in the denoiser's `up_blocks` (the UNet forward feeds one
    block's output straight into the next)."""
    ups = list(getattr(den, "up_blocks", None) or ())
    return any(a is block and b is nxt for a, b in zip(ups, ups[1:]))


def disable_slicing(obj) -> int:
    """Restore every forward that slicing replaced; returns how many modules were restored."""
    return sum(attach.detach(den, FEATURE) for den in denoisers_of(obj))


def slicing_state(obj) -> SlicingState | None:
    """What slicing was enabled with on `obj`'s (first) denoiser, or None when it is off."""
    dens = denoisers_of(obj)
    return attach.get_state(dens[0], FEATURE) if dens else None


def chunks_for(denoiser: nn.Module, sample: torch.Tensor) -> dict[str, int]:
    """The chunk sizes slicing uses for this input: the explicit ones, or what auto picks for this shape."""
    state = slicing_state(denoiser)
    config = state.config if state is not None else SlicingConfig()
    roles = adapter_for(denoiser).roles(denoiser)
    accel = config.on_accelerator(sample.device)
    b, _, f, h, w = sample.shape
    if roles.token:
        cfg = denoiser.config
        pt, ph, pw = cfg.patch_size
        tokens = (f // pt) * (h // ph) * (w // pw)
        dim = cfg.num_attention_heads * cfg.attention_head_dim
        return {"chunk_tokens": config.chunk_tokens or auto_chunk_tokens(tokens, dim, cfg.ffn_dim, accel),
                "chunk_frames": config.chunk_frames or f}
    return {"chunk_frames": config.chunk_frames or auto_chunk_samples(b * f, accelerator=accel),
            "chunk_positions": config.chunk_positions or auto_chunk_positions(h * w, accelerator=accel)}
