"""Exact GroupNorm when the tensor is processed in chunks of an axis the statistics span.

A GroupNorm at the entry of a temporal block (or inside I2VGen-XL's temporal convs) takes its mean and
variance over channel-group x frames x H x W, i.e. across every position chunk. Two passes over the chunks
in fp32 give the global statistics (pass 1: sum -> mean; pass 2: sum of squared deviations -> variance,
which avoids the cancellation of E[x^2] - E[x]^2); each chunk is then normalized with them.

Layout used here: a (B, C, F, P) view (channels, frames, flattened positions); chunks cut P.
"""
from __future__ import annotations

import torch
from torch import nn


def _ranges(n: int, chunk: int):
    for s in range(0, n, max(1, int(chunk))):
        yield s, min(n, s + chunk)


def group_stats(x: torch.Tensor, num_groups: int, eps: float, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """mean and 1/std per (batch, group) of a (B, C, F, P) tensor, reading it `chunk` positions at a time."""
    b, c, f, p = x.shape
    g = num_groups
    count = (c // g) * f * p
    total = None
    for s, e in _ranges(p, chunk):
        part = x[..., s:e].float().reshape(b, g, -1).sum(-1)
        total = part if total is None else total + part
    mean = total / count
    sq = None
    m = mean.view(b, g, 1, 1, 1)
    for s, e in _ranges(p, chunk):
        d = x[..., s:e].float().reshape(b, g, c // g, f, e - s) - m
        part = (d * d).reshape(b, g, -1).sum(-1)
        sq = part if sq is None else sq + part
        del d
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
