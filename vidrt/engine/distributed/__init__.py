"""Slices across several GPUs (or CPU processes) with torch.distributed.

    ctx = setup_from_env()                      # None unless launched by torchrun with WORLD_SIZE > 1
    enable_distributed(pipe, ctx, DistributedConfig(guidance=5.0))

Every rank runs the same pipeline loop (same seed, same scheduler); hooks on the denoiser split each step's
work and all-gather the results, so every rank holds identical noise predictions and latents:
- CFG parallel (`cfg` ranks, 2 when guidance > 1): the guidance streams run on different ranks (vidrt.engine.distributed.cfg);
- sequence parallel (`sp` ranks): one Wan call's tokens split over ranks, self-attention by Ulysses all-to-all
  or K/V gathered per head group (vidrt.engine.distributed.wan_sp); for AnimateDiff one call's frames split over
  ranks, temporal ops on positions after an all-to-all (vidrt.engine.distributed.unet_fp).
world = cfg x sp. Only rank 0 decodes and writes files (vidrt.run).
"""
from vidrt.engine.distributed.api import (DistributedConfig, DistributedState, disable_distributed,
                                          distributed_state, enable_distributed, plan_layout)
from vidrt.engine.distributed.comm import Context, DistributedError, agree
from vidrt.engine.distributed.process_group import context_from_group, guard, setup_from_env, shutdown

__all__ = ["Context", "DistributedConfig", "DistributedError", "DistributedState", "agree", "context_from_group",
           "disable_distributed", "distributed_state", "enable_distributed", "guard", "plan_layout",
           "setup_from_env", "shutdown"]
