"""Chunk sizes when a size is left to vidrt (None): per axis, from the shapes of the call.

Each rule keeps the per-chunk intermediates a fraction of the tensors that cannot be sliced (the residual
stream, K/V, skip connections), and keeps chunks large enough that per-op overhead stays small. That floor
depends on where the chunk runs: a CPU core is busy with a small chunk, while a GPU kernel needs thousands of
rows to hide its launch (launch overhead is most of a sliced GPU forward's time: bench/results/time_model.md),
so chunks sized for an accelerator have larger floors.
"""
from __future__ import annotations

import math

# Below these, per-op overhead outweighs the memory saved (input elements per UNet chunk; DiT tokens per chunk).
MIN_CHUNK_ELEMENTS = {False: 1 << 18, True: 1 << 22}
MIN_CHUNK_TOKENS = {False: 1024, True: 4096}


def on_accelerator(device) -> bool:
    return getattr(device, "type", str(device)) != "cpu"


def auto_chunk_samples(n: int, per_sample: int = 0, accelerator: bool = False) -> int:
    """Samples (batch x frames) per spatial chunk when chunk_frames is None: 1/32 of the axis (one frame
    for 16 frames with CFG), but at least MIN_CHUNK_ELEMENTS input elements per chunk. The un-sliceable
    skip connections then dominate the UNet's peak."""
    floor = math.ceil(MIN_CHUNK_ELEMENTS[accelerator] / per_sample) if per_sample else 1
    return min(n, max(1, math.ceil(n / 32), floor))


def auto_chunk_positions(p: int, per_position: int = 0, accelerator: bool = False) -> int:
    """Positions per temporal chunk when chunk_positions is None: 1/64 of H x W, at least 64 positions and
    MIN_CHUNK_ELEMENTS input elements per chunk."""
    floor = math.ceil(MIN_CHUNK_ELEMENTS[accelerator] / per_position) if per_position else 1
    return min(p, max(64, math.ceil(p / 64), floor))


def auto_chunk_tokens(n_tokens: int, dim: int, ffn_dim: int, accelerator: bool = False) -> int:
    """Token chunk for `chunk_tokens=None`: the per-chunk intermediates (~3 tensors of chunk x ffn_dim in
    the FFN, the largest) stay near 1/2 of one residual-stream tensor (n_tokens x dim), so a block's peak
    is ~3.5 residual streams (stream, K, V, chunk work) instead of ~15; a multiple of 256, at least
    MIN_CHUNK_TOKENS."""
    chunk = math.ceil(n_tokens * dim / (6 * ffn_dim) / 256) * 256
    return int(min(n_tokens, max(MIN_CHUNK_TOKENS[accelerator], chunk)))
