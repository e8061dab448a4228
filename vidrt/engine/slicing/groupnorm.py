"""Exact GroupNorm when the tensor is processed in chunks of an axis the statistics span.

A GroupNorm at the entry of a temporal block (or inside I2VGen-XL's temporal convs) takes its mean and
variance over channel-group x frames x H x W, i.e. across every position chunk. Two passes over the chunks
in fp32 give the global statistics (pass 1: sum -> mean; pass 2: sum of squared deviations -> variance,
which avoids the cancellation of E[x^2] - E[x]^2); each chunk is then normalized with them.

Layout used here: a (B, C, F, P) view (channels, frames, flattened positions); chunks cut P.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from vidrt.core.chunks import ranges

# When set (vidrt.engine.distributed's frame parallel: each rank holds a range of positions), partial sums are
# summed over the ranks, so the statistics are those of the whole tensor.
_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None


@contextlib.contextmanager
def statistics_reduced_by(reduce: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    global _reduce
    previous, _reduce = _reduce, reduce
    try:
        yield
    finally:
        _reduce = previous




def group_stats(x: torch.Tensor, num_groups: int, eps: float, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """mean and 1/std per (batch, group) of a (B, C, F, P) tensor, reading it `chunk` positions at a time."""
    b, c, f, p = x.shape
    g = num_groups
    count = (c // g) * f * p
    total = None
    for s, e in ranges(p, chunk):
        part = x[..., s:e].float().reshape(b, g, -1).sum(-1)
        total = part if total is None else total + part
    if _reduce is not None:
        summed = _reduce(torch.cat([total, torch.full_like(total[:, :1], float(count))], dim=1))
        total, count = summed[:, :g], summed[:, g:]
    mean = total / count
    sq = None
    m = mean.view(b, g, 1, 1, 1)
    for s, e in ranges(p, chunk):
        d = x[..., s:e].float().reshape(b, g, c // g, f, e - s) - m
        part = (d * d).reshape(b, g, -1).sum(-1)
        sq = part if sq is None else sq + part
        del d
    if _reduce is not None:
        sq = _reduce(sq)
    var = sq / count
    return mean, torch.rsqrt(var + eps)


def normalize_chunk(x: torch.Tensor, norm: nn.GroupNorm, mean: torch.Tensor, rstd: torch.Tensor) -> torch.Tensor:
    """GroupNorm of a (B, C, F, p) chunk with precomputed global statistics; fp32 math, input dtype out."""
    b, c, f, p = x.shape
    g = norm.num_groups
    y = (x.float().reshape(b, g, c // g, f, p) - mean.view(b, g, 1, 1, 1)) * rstd.view(b, g, 1, 1, 1)
    y = y.reshape(b, c, f, p)
    if norm.affine:
        # the norm's own forward never runs, so a leaf-level offloading hook never onloads its parameters:
        # fetch them to the chunk's device (a no-op when resident)
        w = norm.weight.to(device=x.device, dtype=torch.float32)
        bias = norm.bias.to(device=x.device, dtype=torch.float32)
        y = y * w.view(1, c, 1, 1) + bias.view(1, c, 1, 1)
    return y.to(x.dtype)


def group_norm_forward(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """`norm(x)` through group_stats (so a reduction set by `statistics_reduced_by` applies); any layout
    (B, C, ...): the statistics span everything after the channels."""
    b, c = x.shape[:2]
    flat = x.reshape(b, c, 1, -1)
    mean, rstd = group_stats(flat, norm.num_groups, norm.eps, flat.shape[-1])
    return normalize_chunk(flat, norm, mean, rstd).reshape(x.shape)
