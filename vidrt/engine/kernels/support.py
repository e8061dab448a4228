"""Which inputs the Triton kernels take. Each check returns the reason it declines (None = supported), so
`backend="auto"` can fall back to torch quietly and `backend="triton"` can say why it refuses."""
from __future__ import annotations

import torch

FLOATS = (torch.float32, torch.float16, torch.bfloat16)
MAX_D = 16384  # one program holds a whole row of the norm in registers


def check_out(x: torch.Tensor, out: torch.Tensor | None) -> None:
    """`out=` must look exactly like the result (both backends): the caller's buffer is never resized or cast."""
    if out is None:
        return
    if out.shape != x.shape or out.dtype != x.dtype or out.device != x.device:
        raise ValueError(f"out must be {tuple(x.shape)} {x.dtype} on {x.device}, "
                         f"got {tuple(out.shape)} {out.dtype} on {out.device}")


def _common(x: torch.Tensor, tensors: dict, out: torch.Tensor | None) -> str | None:
    if x.ndim != 3:
        return f"x must be (B, L, D), got {x.ndim} dims"
    if x.dtype not in FLOATS:
        return f"x dtype {x.dtype} not in {FLOATS}"
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, *tensors.values())):
        return "autograd: the kernels have no backward"
    for name, t in tensors.items():
        if t is None:
            continue
        if t.device != x.device:
            return f"{name} is on {t.device}, x on {x.device}"
        if t.dtype not in FLOATS:
            return f"{name} dtype {t.dtype} not in {FLOATS}"
    if out is not None and any(st == 0 and n > 1 for st, n in zip(out.stride(), out.shape)):
        return "out has overlapping (stride 0) rows"
    return None


def _broadcasts(name: str, t: torch.Tensor, x: torch.Tensor) -> str | None:
    try:
        ok = t.ndim <= 3 and torch.broadcast_shapes(t.shape, x.shape) == x.shape
    except RuntimeError:
        ok = False
    return None if ok else f"{name} {tuple(t.shape)} does not broadcast to x {tuple(x.shape)}"


def norm_modulate_unsupported(x, shift, scale, weight, bias, out) -> str | None:
    reason = _common(x, {"shift": shift, "scale": scale, "weight": weight, "bias": bias}, out)
    if reason:
        return reason
    if shift.dtype != torch.float32 or scale.dtype != torch.float32:
        # `1 + scale` would round in the low-precision dtype in the reference
        return "shift/scale must be fp32"
    if x.shape[-1] > MAX_D:
        return f"D={x.shape[-1]} > {MAX_D}"
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.shape != x.shape[-1:]:
            return f"{name} must be ({x.shape[-1]},), got {tuple(t.shape)}"
    return _broadcasts("shift", shift, x) or _broadcasts("scale", scale, x)


def gate_residual_unsupported(x, f, gate, out) -> str | None:
    reason = _common(x, {"f": f, "gate": gate}, out)
    if reason:
        return reason
    if f.shape != x.shape:
        return f"f must have x's shape {tuple(x.shape)}, got {tuple(f.shape)}"
    return _broadcasts("gate", gate, x)
