"""Fused adaptive-LayerNorm modulation: `LayerNorm(x) * (1 + scale) + shift`, computed in fp32.

This is the operation Wan blocks run before self-attention and before the FFN (`norm1`/`norm3` with the
timestep modulation). The torch reference below defines the result; a Triton kernel computes the same in one
pass on CUDA (one program per token row) when `triton` is importable, so a sliced chunk needs no fp32 copies of
the whole chunk.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def adaln_modulate_reference(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
                             eps: float = 1e-6) -> torch.Tensor:
    """x: (B, L, D); shift/scale broadcastable to x. Returns x's dtype."""
    normed = F.layer_norm(x.float(), (x.shape[-1],), eps=eps)
    return (normed * (1 + scale.float()) + shift.float()).to(x.dtype)


try:  # pragma: no cover - exercised only on CUDA machines with triton
    import triton
    import triton.language as tl

    @triton.jit
    def _adaln_kernel(x_ptr, shift_ptr, scale_ptr, out_ptr, D, mod_stride, eps, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        mask = cols < D
        x = tl.load(x_ptr + row * D + cols, mask=mask, other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=0) / D
        diff = tl.where(mask, x - mean, 0.0)
        var = tl.sum(diff * diff, axis=0) / D
        normed = diff / tl.sqrt(var + eps)
        mod_row = (row // mod_stride) * D
        shift = tl.load(shift_ptr + mod_row + cols, mask=mask, other=0.0).to(tl.float32)
        scale = tl.load(scale_ptr + mod_row + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * D + cols, (normed * (1 + scale) + shift).to(out_ptr.dtype.element_ty), mask=mask)

    HAVE_TRITON = True
except ImportError:
    HAVE_TRITON = False


def adaln_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Triton on CUDA when shift/scale are per-sample (B, 1, D); the torch reference otherwise."""
    per_sample = shift.ndim == 3 and shift.shape[1] == 1 and shift.shape == scale.shape
    if not (HAVE_TRITON and x.is_cuda and per_sample and x.is_contiguous()):
        return adaln_modulate_reference(x, shift, scale, eps)
    b, length, d = x.shape  # pragma: no cover
    out = torch.empty_like(x)
    _adaln_kernel[(b * length,)](x, shift.contiguous(), scale.contiguous(), out, d, length, eps,
                                 BLOCK=triton.next_power_of_2(d))
    return out
