"""Out-of-memory fallback: when a denoiser evaluation runs out of memory, free caches, halve the slicing
chunk sizes and run that evaluation again (the scheduler has not stepped yet, so this retries the step).

Also `AllocationLimit`, which makes any op whose result exceeds a byte limit raise `torch.OutOfMemoryError`:
an injected limit that lets the fallback be exercised (and tested) on a CPU.
"""
from __future__ import annotations

import gc
from collections.abc import Callable

import torch
from diffusers.hooks import ModelHook
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from vidrt.core.errors import VidrtError
from vidrt.engine.attach import remove_hook, replace_hook

HOOK_NAME = "vidrt_oom_fallback"


class AllocationLimit(TorchDispatchMode):
    """Raise `torch.OutOfMemoryError` for any op whose output storage exceeds `limit_bytes`."""

    def __init__(self, limit_bytes: int):
        super().__init__()
        self.limit = int(limit_bytes)
        self.refused = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage()._cdata for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.untyped_storage()._cdata in inputs:
                continue  # views and in-place results allocate nothing new
            if t.untyped_storage().nbytes() > self.limit:
                self.refused += 1
                raise torch.OutOfMemoryError(
                    f"injected limit: {func} wanted {t.untyped_storage().nbytes()} bytes > {self.limit}")
        return out


def current_chunks(denoiser: nn.Module, sample: torch.Tensor) -> dict[str, int]:
    """The chunk sizes slicing uses for this input: the explicit ones, or what `auto` picks for this shape."""
    from vidrt.models import adapter_for
    from vidrt.engine.slicing import slicing_state
    from vidrt.engine.slicing.unet import auto_chunk_positions, auto_chunk_samples
    from vidrt.engine.slicing.wan import auto_chunk_tokens

    state = slicing_state(denoiser) or {}
    roles = adapter_for(denoiser).roles(denoiser)
    b, _, f, h, w = sample.shape
    if roles.token:
        cfg = denoiser.config
        pt, ph, pw = cfg.patch_size
        tokens = (f // pt) * (h // ph) * (w // pw)
        dim = cfg.num_attention_heads * cfg.attention_head_dim
        return {"chunk_tokens": state.get("chunk_tokens") or auto_chunk_tokens(tokens, dim, cfg.ffn_dim),
                "chunk_frames": state.get("chunk_frames") or f}
    return {"chunk_frames": state.get("chunk_frames") or auto_chunk_samples(b * f),
            "chunk_positions": state.get("chunk_positions") or auto_chunk_positions(h * w)}


class OomFallbackHook(ModelHook):
    """Retry a denoiser call after an OOM with halved chunk sizes, down to one element per chunk."""

    def __init__(self, pipe_or_denoiser, log: Callable[[str], None] | None = None):
        super().__init__()
        self.target = pipe_or_denoiser
        self.log = log or (lambda msg: None)
        self.retries: list[dict[str, int]] = []

    def new_forward(self, module, *args, **kwargs):
        from vidrt.engine.slicing import enable_slicing, slicing_state

        while True:
            try:
                return self.fn_ref.original_forward(*args, **kwargs)
            except torch.OutOfMemoryError as exc:
                message = str(exc).splitlines()[0] if str(exc) else "out of memory"
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            sample = next(a for a in list(args) + list(kwargs.values())
                          if isinstance(a, torch.Tensor) and a.ndim == 5)
            if slicing_state(module) is None:
                chunks = current_chunks_after_enable(module, sample)
            else:
                now = current_chunks(module, sample)
                if all(v <= 1 for v in now.values()):
                    raise VidrtError(f"out of memory even with one frame/token/position per chunk ({message}); "
                                     "lower height/width/frames or use memory.offload: group") from None
                chunks = {k: max(1, v // 2) for k, v in now.items()}
                enable_slicing(self.target, **chunks)
            self.retries.append(chunks)
            self.log(f"out of memory in the denoiser ({message}); retrying with chunks {chunks}")


def current_chunks_after_enable(module, sample) -> dict[str, int]:
    """Slicing was off: the first fallback turns it on (auto sizes), which is usually enough."""
    from vidrt.engine.slicing import enable_slicing

    enable_slicing(module)
    return current_chunks(module, sample)


def enable_oom_fallback(pipe, denoiser: nn.Module, log: Callable[[str], None] | None = None) -> OomFallbackHook:
    return replace_hook(denoiser, OomFallbackHook(pipe, log), HOOK_NAME)


def disable_oom_fallback(denoiser: nn.Module) -> None:
    remove_hook(denoiser, HOOK_NAME)
