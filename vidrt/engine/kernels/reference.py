"""Torch references for the sliced Wan block's two elementwise groups.

They are the definition of the result: the exact expressions diffusers' `WanTransformerBlock.forward` (and
`vidrt.engine.slicing.wan.sliced_block`) evaluate, op for op, so swapping them in changes no bit. The Triton kernels
are checked against them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def norm_modulate_reference(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, *, eps: float,
                            weight: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`(norm(x.float()) * (1 + scale) + shift).type_as(x)` with `norm` = diffusers' `FP32LayerNorm` over the
    last dim (affine when weight/bias are given, applied before the modulation as LayerNorm does)."""
    normed = F.layer_norm(x.float(), (x.shape[-1],), None if weight is None else weight.float(),
                          None if bias is None else bias.float(), eps)
    return (normed * (1 + scale) + shift).type_as(x)


def gate_residual_reference(x: torch.Tensor, f: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """`(x.float() + f.float() * gate).type_as(x)`: the gated residual add after self-attention and the FFN.
    Equals the self-attention form `(x.float() + a * gate).type_as(x)` when gate is fp32."""
    return (x.float() + f.float() * gate).type_as(x)
