"""Fused kernels for the sliced Wan block's elementwise groups, with torch references that define the result.

`norm_modulate` (norm1/norm3 -> AdaLN modulation) and `gate_residual` (gated residual add) each pick a
backend: "torch" runs the reference (bit-identical to diffusers' block arithmetic), "triton" runs the fused
kernel (raises if it cannot), "auto" (default) takes Triton only for CUDA tensors it supports, so CPU
behaviour never changes. `VIDRT_KERNELS=torch` turns "auto" into "torch" (e.g. to rule the kernels out).
`out=` writes the result into a caller's buffer (e.g. a view of the residual stream; `out=x` in place).
"""
from __future__ import annotations

import importlib.util
import os
import sys

import torch

from vidrt.engine.kernels import support
from vidrt.engine.kernels.reference import gate_residual_reference, norm_modulate_reference

__all__ = ["norm_modulate", "gate_residual", "norm_modulate_reference", "gate_residual_reference",
           "triton_available", "BACKENDS"]

BACKENDS = ("auto", "torch", "triton")
_KERNELS = "vidrt.engine.kernels.triton_kernels"


def _interpreter_env() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def triton_available(device) -> bool:
    """Whether the Triton kernels can run on tensors of `device`: CUDA with triton importable, or any device
    under Triton's interpreter (TRITON_INTERPRET=1 when the kernels module is first imported)."""
    dev = torch.device(device)
    mod = sys.modules.get(_KERNELS)
    interpreted = mod.INTERPRETED if mod is not None else _interpreter_env()
    if not interpreted and not (dev.type == "cuda" and torch.cuda.is_available()):
        return False
    if interpreted and dev.type not in ("cpu", "cuda"):
        return False
    return _kernels() is not None


_IMPORT_ERROR: list = []


def _kernels():
    """The kernels module, imported on first use (importing triton costs ~1 s); None when triton is absent
    or fails to import."""
    mod = sys.modules.get(_KERNELS)
    if mod is not None or _IMPORT_ERROR:
        return mod
    if importlib.util.find_spec("triton") is None:
        _IMPORT_ERROR.append("triton is not installed")
        return None
    try:
        import vidrt.engine.kernels.triton_kernels as mod
    except Exception as exc:  # a broken triton install must not break the torch path
        _IMPORT_ERROR.append(f"importing triton failed: {exc!r}")
        return None
    return mod


def _use_triton(backend: str, x: torch.Tensor, reason) -> bool:
    """Resolve `backend` for this call; `reason()` says why the inputs are unsupported (None = supported)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch" or x.numel() == 0:
        return False
    if backend == "auto":
        if not x.is_cuda or os.environ.get("VIDRT_KERNELS", "auto") == "torch":
            return False
        return triton_available(x.device) and reason() is None
    if not triton_available(x.device):
        why = _IMPORT_ERROR[0] if _IMPORT_ERROR else \
            f"no Triton for {x.device} tensors (CPU needs TRITON_INTERPRET=1 before the kernels are imported)"
        raise RuntimeError(f"backend='triton' unavailable: {why}")
    why = reason()
    if why is not None:
        raise ValueError(f"backend='triton' does not take these inputs: {why}")
    return True


def norm_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, *, eps: float,
                  weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                  out: torch.Tensor | None = None, backend: str = "auto") -> torch.Tensor:
    """`(LayerNorm(x.float()) * (1 + scale) + shift).type_as(x)`, see `norm_modulate_reference`.

    x: (B, L, D) fp32/fp16/bf16; shift/scale: fp32, (B, 1, D) per sample or (B, L, D) per token (any view
    broadcastable to x); weight/bias: (D,) for an affine norm. Returns `out` when given."""
    support.check_out(x, out)
    if _use_triton(backend, x, lambda: support.norm_modulate_unsupported(x, shift, scale, weight, bias, out)):
        return _kernels().norm_modulate(x, shift, scale, eps, weight, bias, torch.empty_like(x) if out is None else out)
    result = norm_modulate_reference(x, shift, scale, eps=eps, weight=weight, bias=bias)
    return result if out is None else out.copy_(result)


def gate_residual(x: torch.Tensor, f: torch.Tensor, gate: torch.Tensor, *, out: torch.Tensor | None = None,
                  backend: str = "auto") -> torch.Tensor:
    """`(x.float() + f.float() * gate).type_as(x)`, see `gate_residual_reference`.

    x: (B, L, D) fp32/fp16/bf16; f: x's shape, x's dtype or fp32; gate: (B, 1, D) or (B, L, D), fp32.
    `out=x` updates the residual stream in place. Returns `out` when given."""
    support.check_out(x, out)
    if _use_triton(backend, x, lambda: support.gate_residual_unsupported(x, f, gate, out)):
        return _kernels().gate_residual(x, f, gate, torch.empty_like(x) if out is None else out)
    result = gate_residual_reference(x, f, gate)
    return result if out is None else out.copy_(result)
