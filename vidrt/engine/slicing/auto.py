"""Chunk sizes when a size is left to vidrt (None): per axis, from the shapes of the call.

Each rule keeps the per-chunk intermediates a fraction of the tensors that cannot be sliced (the residual
stream, K/V, skip connections), and keeps chunks large enough that per-op overhead stays small.
"""
from __future__ import annotations

import math

MIN_CHUNK_ELEMENTS = 1 << 18  # below ~256k elements per chunk, per-op overhead outweighs the memory saved


def auto_chunk_samples(n: int, per_sample: int = 0) -> int:
    """Samples (batch x frames) per spatial chunk when chunk_frames is None: 1/32 of the axis (one frame
    for 16 frames with CFG), but at least MIN_CHUNK_ELEMENTS input elements per chunk. The un-sliceable
    skip connections then dominate the UNet's peak."""
    floor = math.ceil(MIN_CHUNK_ELEMENTS / per_sample) if per_sample else 1
    return min(n, max(1, math.ceil(n / 32), floor))


def auto_chunk_positions(p: int, per_position: int = 0) -> int:
    """Positions per temporal chunk when chunk_positions is None: 1/64 of H x W, at least 64 positions and
    MIN_CHUNK_ELEMENTS input elements per chunk."""
    floor = math.ceil(MIN_CHUNK_ELEMENTS / per_position) if per_position else 1
    return min(p, max(64, math.ceil(p / 64), floor))


def auto_chunk_tokens(n_tokens: int, dim: int, ffn_dim: int) -> int:
    """Token chunk for `chunk_tokens=None`: the per-chunk intermediates (~3 tensors of chunk x ffn_dim in
    the FFN, the largest) stay near 1/2 of one residual-stream tensor (n_tokens x dim), so a block's peak
    is ~3.5 residual streams (stream, K, V, chunk work) instead of ~15; a multiple of 256, at least 1024
    (smaller chunks mostly add per-chunk overhead)."""
    chunk = math.ceil(n_tokens * dim / (6 * ffn_dim) / 256) * 256
    return int(min(n_tokens, max(1024, chunk)))
