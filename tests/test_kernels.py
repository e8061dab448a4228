"""kernels/: the fused AdaLN modulation equals what a Wan block computes with its own modules."""
from __future__ import annotations

import sys

import torch

from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kernels.adaln_modulate import adaln_modulate, adaln_modulate_reference  # noqa: E402


def test_reference_equals_wan_block_modulation():
    from diffusers.models.normalization import FP32LayerNorm

    torch.manual_seed(0)
    x = torch.randn(2, 37, 24)
    shift, scale = torch.randn(2, 1, 24), torch.randn(2, 1, 24)
    norm = FP32LayerNorm(24, eps=1e-6, elementwise_affine=False)
    expected = (norm(x.float()) * (1 + scale) + shift).type_as(x)  # as WanTransformerBlock does
    assert torch.allclose(adaln_modulate_reference(x, shift, scale), expected, atol=1e-6)
    assert torch.equal(adaln_modulate(x, shift, scale), adaln_modulate_reference(x, shift, scale))


def test_reference_keeps_dtype_and_differs_for_other_inputs():
    x = torch.randn(1, 8, 16, dtype=torch.bfloat16)
    shift, scale = torch.zeros(1, 1, 16), torch.zeros(1, 1, 16)
    out = adaln_modulate_reference(x, shift, scale)
    assert out.dtype == torch.bfloat16
    assert not torch.allclose(out.float(), adaln_modulate_reference(x, shift + 1, scale).float())
