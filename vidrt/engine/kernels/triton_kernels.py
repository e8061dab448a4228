"""Triton kernels for the sliced Wan block's elementwise groups: one pass over a token chunk, fp32 math in
registers, output in x's dtype: no fp32 copies of the chunk (torch's expression allocates several).

Every tensor is addressed through its (B, L, D) strides: chunk views (`hidden_states[:, s:e]`), broadcast
per-sample modulation (stride 0 over L) and per-token modulation (Wan 2.2) need no copies, and `out` can be
a view of the residual-stream buffer. Offsets are int64 (a long video's stream passes 2**31 elements).
Compiled without FMA contraction and with IEEE div/sqrt (COMPILE_OPTIONS, div_rn/sqrt_rn).

Imported only when the Triton path runs. Under TRITON_INTERPRET=1 (read when this module is imported) the
kernels run on CPU tensors with numpy; there fp32 -> bf16 stores truncate instead of rounding to nearest
even (an interpreter limitation: GPUs round), so bf16 results may sit one bf16 ulp below the reference.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction


@triton.jit
def _norm_modulate_kernel(x_ptr, shift_ptr, scale_ptr, w_ptr, b_ptr, out_ptr, n_rows, L, D, eps,
                          sxb, sxl, sxd, shb, shl, shd, scb, scl, scd, sob, sol, sod, swd, sbd,
                          HAS_W: tl.constexpr, HAS_B: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    bi = (rows // L)[:, None]
    li = (rows % L)[:, None]
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < D
    mask = (rows < n_rows)[:, None] & col_ok[None, :]
    c = cols[None, :]
    x = tl.load(x_ptr + bi * sxb + li * sxl + c * sxd, mask=mask, other=0.0).to(tl.float32)
    mean = tl.div_rn(tl.sum(x, axis=1), D * 1.0)  # IEEE division: `/` is div.full (~2 ulp) on NVIDIA
    diff = tl.where(mask, x - mean[:, None], 0.0)
    var = tl.div_rn(tl.sum(diff * diff, axis=1), D * 1.0)
    rstd = tl.div_rn(1.0, tl.sqrt_rn(var + eps))
    y = diff * rstd[:, None]
    if HAS_W:
        y = y * tl.load(w_ptr + cols * swd, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_B:
        y = y + tl.load(b_ptr + cols * sbd, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    scale = tl.load(scale_ptr + bi * scb + li * scl + c * scd, mask=mask, other=0.0).to(tl.float32)
    shift = tl.load(shift_ptr + bi * shb + li * shl + c * shd, mask=mask, other=0.0).to(tl.float32)
    y = y * (1.0 + scale) + shift
    tl.store(out_ptr + bi * sob + li * sol + c * sod, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gate_residual_kernel(x_ptr, f_ptr, g_ptr, out_ptr, n_rows, L, D,
                          sxb, sxl, sxd, sfb, sfl, sfd, sgb, sgl, sgd, sob, sol, sod,
                          ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    bi = (rows // L)[:, None]
    li = (rows % L)[:, None]
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = (rows < n_rows)[:, None] & (cols < D)[None, :]
    c = cols[None, :]
    x = tl.load(x_ptr + bi * sxb + li * sxl + c * sxd, mask=mask, other=0.0).to(tl.float32)
    f = tl.load(f_ptr + bi * sfb + li * sfl + c * sfd, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + bi * sgb + li * sgl + c * sgd, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + bi * sob + li * sol + c * sod, (x + f * g).to(out_ptr.dtype.element_ty), mask=mask)


INTERPRETED = isinstance(_norm_modulate_kernel, InterpretedFunction)
# No mul+add -> FMA contraction: `a * b + c` rounds twice, as torch's separate ops do (gate_residual is then
# bit-identical to torch on GPUs too).
COMPILE_OPTIONS = {"enable_fp_fusion": False}


def _strides(t: torch.Tensor, shape) -> tuple[int, int, int]:
    return t.expand(shape).stride()


def _tile(block_d: int) -> tuple[int, int]:
    """Rows per program (a few thousand elements per tile) and warps for that tile."""
    rows = max(1, min(16, 4096 // block_d))
    return rows, min(16, max(1, rows * block_d // 256))


def norm_modulate(x, shift, scale, eps, weight, bias, out):
    B, L, D = x.shape
    n_rows = B * L
    block_d = triton.next_power_of_2(D)
    rows, warps = _tile(block_d)
    w = weight if weight is not None else x  # placeholder pointer, never read (HAS_W=False)
    b = bias if bias is not None else x
    _norm_modulate_kernel[(triton.cdiv(n_rows, rows),)](
        x, shift, scale, w, b, out, n_rows, L, D, float(eps),
        *x.stride(), *_strides(shift, x.shape), *_strides(scale, x.shape), *out.stride(),
        w.stride(-1), b.stride(-1),
        HAS_W=weight is not None, HAS_B=bias is not None, ROWS=rows, BLOCK_D=block_d,
        num_warps=warps, **COMPILE_OPTIONS)
    return out


def gate_residual(x, f, gate, out):
    B, L, D = x.shape
    n_rows = B * L
    block_d = min(1024, triton.next_power_of_2(D))
    rows, warps = _tile(block_d)
    _gate_residual_kernel[(triton.cdiv(n_rows, rows), triton.cdiv(D, block_d))](
        x, f, gate, out, n_rows, L, D,
        *x.stride(), *f.stride(), *_strides(gate, x.shape), *out.stride(),
        ROWS=rows, BLOCK_D=block_d, num_warps=warps, **COMPILE_OPTIONS)
    return out
