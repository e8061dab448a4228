"""`enable_distributed(pipe, ctx, DistributedConfig(...))` / `disable_distributed(pipe)`: the hooks that split each
denoiser call over the ranks (CFG streams, Wan tokens, UNet frames) and FSDP2 weight sharding."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from vidrt.core.errors import VidrtError
from vidrt.engine import attach
from vidrt.engine.distributed import cfg as cfg_mod
from vidrt.engine.distributed import shard as shard_mod
from vidrt.engine.distributed import unet_fp, wan_sp
from vidrt.engine.distributed.comm import Context, make_groups
from vidrt.models import adapter_for

FEATURE = "distributed"


def plan_layout(world: int, guidance: float | None, sequence_capable: bool, mode: str = "auto") -> tuple[int, int]:
    """(cfg, sp) ranks. auto: CFG parallel over 2 when guidance > 1 and world is even, the rest sequence
    parallel (DiT only); 'cfg' / 'sequence' force one kind."""
    cfg_ok = guidance is None or guidance > 1.0
    if mode == "cfg":
        cfg, sp = world, 1
    elif mode == "sequence":
        cfg, sp = 1, world
    elif mode == "auto":
        if cfg_ok and world % 2 == 0:
            cfg, sp = 2, world // 2
        else:
            cfg, sp = 1, world
    else:
        raise VidrtError(f"distributed mode: {mode!r} is not one of auto, cfg, sequence")
    if sp > 1 and not sequence_capable:
        raise VidrtError(f"devices: {world} ranks need sequence/frame parallel over {sp}, which this model family "
                         "does not support (I2VGen-XL: 2 ranks with guidance > 1, i.e. CFG parallel)")
    if cfg > 2:
        raise VidrtError(f"devices: CFG parallel splits 2 guidance streams; {world} ranks in 'cfg' mode is too many")
    if cfg == 2 and not cfg_ok:
        raise VidrtError(f"guidance: {guidance} has no second CFG stream to run on another rank; "
                         "use sequence parallel or one device")
    return cfg, sp


@dataclass(frozen=True)
class DistributedConfig:
    """How one denoiser call is split over the ranks of a torchrun.

    mode: auto | cfg | sequence (see `plan_layout`);
    head_groups: how many pieces a block's self-attention K/V is all-gathered in under sequence parallel
        (None: one per head);
    attention: auto | ulysses | gather - sequence-parallel self-attention by all-to-all over heads (auto: when
        the heads divide by the ranks) or by K/V all-gather;
    shard: the denoiser's weights sharded over all ranks with FSDP2 (vidrt.engine.distributed.shard; permanent:
        disabling leaves them sharded);
    guidance: the CFG scale (CFG parallel needs a second stream).
    """

    mode: str = "auto"
    head_groups: int | None = None
    attention: str = "auto"
    shard: bool = False
    guidance: float | None = None

    @classmethod
    def from_env(cls, **overrides) -> DistributedConfig:
        """Defaults from VIDRT_DIST_MODE / VIDRT_DIST_HEAD_GROUPS / VIDRT_DIST_ATTENTION, then `overrides`."""
        env = {"mode": os.environ.get("VIDRT_DIST_MODE", "auto"),
               "head_groups": int(os.environ.get("VIDRT_DIST_HEAD_GROUPS", "0") or 0) or None,
               "attention": os.environ.get("VIDRT_DIST_ATTENTION", "auto")}
        return cls(**{**env, **{k: v for k, v in overrides.items() if v is not None}})


@dataclass
class DistributedState:
    """What was applied (`described`, for the sidecar) and the hooks by kind (their call counters)."""

    described: dict[str, Any]
    hooks: dict[str, Any] = field(default_factory=dict)

    def reset(self) -> None:
        for hook in self.hooks.values():
            for key in getattr(hook, "calls", {}):
                hook.calls[key] = 0


def enable_distributed(pipe, ctx: Context | None, config: DistributedConfig = DistributedConfig(), *,
                       adapter=None) -> DistributedState | None:
    """Attach the distributed hooks to `pipe`'s denoiser (collective: every rank calls it). None for a
    single-process run. `adapter`: for a stand-in pipeline (the simulator's), which names no family."""
    if ctx is None or ctx.world <= 1:
        return None
    adapter = adapter or adapter_for(pipe)
    denoiser = adapter.denoiser(pipe)
    disable_distributed(pipe, adapter)
    tokens = bool(adapter.roles(denoiser).token) and wan_sp.supports(denoiser)
    frames = adapter.frame_parallel and unet_fp.supports(adapter, denoiser)
    n_cfg, n_sp = plan_layout(ctx.world, config.guidance, tokens or frames, config.mode)
    make_groups(ctx, n_cfg, n_sp)
    hooks: dict[str, Any] = {}
    ulysses = False
    if n_sp > 1 and tokens:
        ulysses = wan_sp.uses_ulysses(denoiser.config.num_attention_heads, n_sp, config.attention)
        hooks["sequence"] = wan_sp.enable(denoiser, ctx, config.head_groups, "ulysses" if ulysses else "gather")
    elif n_sp > 1:
        hooks["frames"] = unet_fp.enable(denoiser, adapter, ctx)
    if n_cfg > 1:
        hooks["cfg"] = cfg_mod.enable(denoiser, ctx, next(iter(adapter.frame_inputs)))
        cfg_mod.capture_negative(pipe, hooks["cfg"])
    sharded = None
    if config.shard:
        sharded = (shard_mod.shard_weights(denoiser, ctx) if not shard_mod.is_sharded(denoiser)
                   else {"shards": ctx.world})
    described = {**ctx.describe(), "weights": {"sharded": sharded} if sharded else "replicated"}
    if n_sp > 1 and tokens:
        described["sequence_attention"] = "ulysses" if ulysses else "gather"
        if not ulysses:
            described["head_groups"] = config.head_groups or "per head"
    elif n_sp > 1:
        described["frame_parallel"] = n_sp
    return attach.set_state(denoiser, FEATURE, DistributedState(described, hooks))


def distributed_state(pipe, adapter=None) -> DistributedState | None:
    return attach.get_state((adapter or adapter_for(pipe)).denoiser(pipe), FEATURE)


def disable_distributed(pipe, adapter=None) -> None:
    attach.detach((adapter or adapter_for(pipe)).denoiser(pipe), FEATURE)
    attach.detach(pipe, FEATURE)
