"""Feature slicing (Streamlined Inference): run a video denoiser's operators on chunks of the axis they
are independent along, so their intermediates exist one chunk at a time. Exact (sliced == unsliced).

    vidrt.enable_slicing(pipe_or_denoiser, chunk_frames=None, chunk_tokens=None, chunk_positions=None)
    vidrt.disable_slicing(pipe_or_denoiser)

`None` picks a size automatically at call time from the shapes. Modules are patched in place (a reference
to the denoiser taken before keeps running sliced); `disable_slicing` restores every forward exactly.
Which submodule is spatial / temporal / token-wise comes from the model family's adapter (vidrt.models).
"""
from __future__ import annotations

from typing import Any

from torch import nn

from vidrt.engine.slicing import patching

__all__ = ["enable_slicing", "disable_slicing", "slicing_state", "apply_memory_config", "denoisers_of"]

_STATE_ATTR = "_vidrt_slicing_state"


def denoisers_of(obj) -> list[nn.Module]:
    """The denoiser(s) of a pipeline (Wan 2.2 has two), or [obj] for a bare denoiser."""
    from diffusers import DiffusionPipeline

    from vidrt.models import adapter_for

    if isinstance(obj, DiffusionPipeline):
        adapter = adapter_for(obj)
        found = [adapter.denoiser(obj)]
        extra = getattr(obj, "transformer_2", None)
        if isinstance(extra, nn.Module):
            found.append(extra)
        return [d for d in found if d is not None]
    if isinstance(obj, nn.Module):
        adapter_for(obj)  # raises a clear error for unsupported models
        return [obj]
    raise TypeError(f"enable_slicing: expected a diffusers pipeline or a denoiser module, got {type(obj).__name__}")


def _check_chunk(name: str, value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive integer or None, got {value!r}")
    return value


def enable_slicing(obj, chunk_frames: int | None = None, chunk_tokens: int | None = None,
                   chunk_positions: int | None = None) -> dict[str, Any]:
    """Slice `obj`'s denoiser(s) in place. Calling it again re-applies with the new sizes. Returns a
    summary: chunk sizes (None = auto at call time) and how many modules of each kind were patched."""
    chunk_frames = _check_chunk("chunk_frames", chunk_frames)
    chunk_tokens = _check_chunk("chunk_tokens", chunk_tokens)
    chunk_positions = _check_chunk("chunk_positions", chunk_positions)
    summary: dict[str, Any] = {"chunk_frames": chunk_frames, "chunk_tokens": chunk_tokens,
                               "chunk_positions": chunk_positions, "patched": {}}
    for den in denoisers_of(obj):
        _disable_denoiser(den)
        counts = _enable_denoiser(den, chunk_frames, chunk_tokens, chunk_positions)
        for k, v in counts.items():
            summary["patched"][k] = summary["patched"].get(k, 0) + v
    return summary


def _enable_denoiser(den: nn.Module, chunk_frames, chunk_tokens, chunk_positions) -> dict[str, int]:
    from vidrt.models import adapter_for
    from vidrt.engine.slicing import groups, unet, wan

    roles = adapter_for(den).roles(den)
    modules = dict(den.named_modules())
    counts: dict[str, int] = {}

    def put(module, fn, kind):
        if patching.install(module, fn, kind):
            counts[kind] = counts.get(kind, 0) + 1

    if roles.token:
        # A DiT: its blocks are token-wise; the model forward handles patch embedding / output projection.
        for name in roles.token:
            put(modules[name], wan.make_block_forward(chunk_tokens), "token-block")
        put(den, wan.make_model_forward(chunk_tokens, chunk_frames), "dit-model")
    else:
        for name in roles.spatial:
            put(modules[name], unet.make_spatial_forward(chunk_frames), "spatial")
        # Operator groups: [upsample ->] cat -> resnet (-> attention) per frame chunk in the up blocks.
        up_blocks = [m for name, m in modules.items() if name and groups.is_groupable_up_block(m)]
        for i, block in enumerate(up_blocks):
            nxt = up_blocks[i + 1] if i + 1 < len(up_blocks) else None
            prev = up_blocks[i - 1] if i > 0 else None
            defer = nxt is not None and block.upsamplers is not None and _follows(den, block, nxt)
            previous = prev.upsamplers if prev is not None and prev.upsamplers is not None and \
                _follows(den, prev, block) else None
            put(block, groups.make_up_block_forward(chunk_frames, unet.auto_chunk_samples, defer, previous),
                "up-block-group")
    for name in roles.temporal:
        module = modules[name]
        if unet.is_temporal_conv(module):
            put(module, unet.make_temporal_conv_forward(chunk_positions), "temporal-conv")
        else:
            put(module, unet.make_temporal_transformer_forward(chunk_positions), "temporal-transformer")
    object.__setattr__(den, _STATE_ATTR, {"chunk_frames": chunk_frames, "chunk_tokens": chunk_tokens,
                                          "chunk_positions": chunk_positions, "patched": counts})
    return counts


def _follows(den: nn.Module, block: nn.Module, nxt: nn.Module) -> bool:
    """True when `nxt` directly follows `block` in the denoiser's `up_blocks` (the UNet forward feeds one
    block's output straight into the next)."""
    ups = list(getattr(den, "up_blocks", None) or ())
    for a, b in zip(ups, ups[1:]):
        if a is block and b is nxt:
            return True
    return False


def _disable_denoiser(den: nn.Module) -> int:
    n = 0
    for module in den.modules():
        n += patching.remove(module)
    if _STATE_ATTR in den.__dict__:
        object.__delattr__(den, _STATE_ATTR)
    return n


def disable_slicing(obj) -> int:
    """Restore every forward that slicing replaced; returns how many modules were restored."""
    return sum(_disable_denoiser(den) for den in denoisers_of(obj))


def slicing_state(obj) -> dict | None:
    """The settings slicing was enabled with on `obj`'s (first) denoiser, or None when it is off."""
    dens = denoisers_of(obj)
    return dens[0].__dict__.get(_STATE_ATTR) if dens else None


def apply_memory_config(pipe, memory: dict, device) -> dict:
    from vidrt.engine.slicing.config import apply_memory_config as _apply

    return _apply(pipe, memory, device)
