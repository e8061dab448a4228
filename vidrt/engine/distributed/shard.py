"""Weights sharded over the ranks with torch's FSDP2 (`memory.offload: shard` under torchrun).

Replicated weights cost every GPU the whole model (Wan 14B: 26.6 GiB bf16), which is what keeps a 14B render
off 24 GB cards even when the activations are split. `fully_shard` on each outermost block (the units group
offloading streams) and on the denoiser itself leaves each rank 1/N of every weight; a block's weights are
all-gathered just before it runs and freed right after (`reshard_after_forward`), so a rank holds its shard
plus one block. FSDP gathers when a sharded module is *called*; code that runs a block's maths without calling
it (the sequence-parallel block) wraps it in `gathered(block)`.

Every rank must enter the same blocks in the same order (FSDP's all-gathers are collectives over all ranks):
true for every layout here, since CFG ranks run the same modules on different streams at the same time.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from torch import nn

from vidrt.core.tensors import module_bytes
from vidrt.engine.distributed import comm
from vidrt.models.layout import stream_units


def rank_weight_bytes(denoiser: nn.Module, ranks: int, total_bytes: int | None = None) -> int:
    """A rank's weight bytes with the denoiser sharded over `ranks`: its 1/N plus the running and the prefetched
    block (FSDP2 all-gathers the next block while one runs). `total_bytes`: the full model's weight bytes when
    `denoiser` is a reduced copy (the simulator drops repeated layers)."""
    total = module_bytes([denoiser]) if total_bytes is None else total_bytes
    largest = max((module_bytes([b]) for b in stream_units(denoiser)), default=0)
    return -(-total // ranks) + 2 * largest


def shard_weights(denoiser: nn.Module, ctx: comm.Context) -> dict[str, Any]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(ctx.device.type, (ctx.world,))
    blocks = stream_units(denoiser)
    summary = {"shards": ctx.world, "units": len(blocks) + 1, "weight_bytes": module_bytes([denoiser]),
               "per_rank_bytes": rank_weight_bytes(denoiser, ctx.world)}
    for block in blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=True)
    fully_shard(denoiser, mesh=mesh, reshard_after_forward=True)
    return summary


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


@contextlib.contextmanager
def gathered(module: nn.Module) -> Iterator[None]:
    """The module's full weights for code that uses them without calling the module (no-op when it is not
    sharded)."""
    if not is_sharded(module):
        yield
        return
    module.unshard()
    try:
        yield
    finally:
        module.reshard()
