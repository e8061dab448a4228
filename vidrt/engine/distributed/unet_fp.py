"""Frame parallel for a UNet inside one denoiser call (adapters that allow it: AnimateDiff).

Each rank of the sequence group runs the UNet on its own contiguous range of frames: every spatial op (ResNet
blocks, spatial transformers, up/down samplers, the convs in and out) works frame by frame, so it needs nothing
from the other ranks. A temporal op (motion module, temporal conv, temporal transformer) mixes frames at each
position, so around it one all-to-all trades the rank's frames x all positions for all frames x the rank's
positions, the op runs there, and a second all-to-all trades back (DSP-style: the sharded axis switches
between frames and positions). The GroupNorms inside temporal ops take their statistics over every frame and
position: their partial sums are all-reduced over the group, so the result is the single-process one. Only the
UNet's output frames are all-gathered at the end. Each rank still applies the in-rank Feature Slicer.

A temporal op's positions are handed to it as a (1 x P) image; every op here treats positions independently
except through those GroupNorms.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from vidrt.engine import attach
from vidrt.engine.attach import ArgumentsHook
from vidrt.engine.distributed import comm
from vidrt.engine.distributed.cfg import unpack_output
from vidrt.engine.long import slice_frames
from vidrt.engine.slicing.groupnorm import group_norm_forward, statistics_reduced_by

PART, TEMPORAL_PART = "frames", "temporal"


class _Active:
    """What the temporal hooks need during one frame-parallel call."""

    def __init__(self, ctx: comm.Context, frames: int):
        self.ctx = ctx
        self.group = ctx.groups["sp"]
        self.n, self.rank = ctx.sp, ctx.sp_rank
        self.frames = frames
        self.frame_sizes = [e - s for s, e in (comm.split_range(frames, self.n, i) for i in range(self.n))]

    def reduce(self, t: torch.Tensor) -> torch.Tensor:
        return comm.all_reduce_sum(t, self.group)


class TemporalExchangeHook(ArgumentsHook):
    """Around one temporal op: frames-sharded -> positions-sharded -> the op -> back. Passes through when no
    frame-parallel call is active (e.g. the hooks are installed but the call is replicated)."""

    def __init__(self, owner: FrameParallelHook):
        super().__init__()
        self.owner = owner

    def new_forward(self, module, *args, **kwargs):
        inner = self.fn_ref.original_forward
        act = self.owner.active
        if act is None:
            return inner(*args, **kwargs)
        bound = self.arguments(module, args, kwargs)
        x = bound.pop("hidden_states")
        f_local = int(bound.get("num_frames", 1))
        n, r = act.n, act.rank
        bf, c, h, w = x.shape
        b = bf // f_local
        p = h * w
        pos = [comm.split_range(p, n, j) for j in range(n)]
        local = x.reshape(b, f_local, c, p)
        # frames-sharded (b, f_local, c, P) -> positions-sharded (b, F, c, P_r)
        got = comm.all_to_all_shaped([local[..., s:e] for s, e in pos],
                        [(b, act.frame_sizes[i], c, pos[r][1] - pos[r][0]) for i in range(n)], act.group)
        mine = torch.cat(got, dim=1)
        del got
        pr = mine.shape[-1]
        out = self._temporal(module, inner, mine.reshape(b * act.frames, c, 1, pr), act.frames, bound, act)
        del mine
        y, rebuild = unpack_output(out)
        c_out = y.shape[1]
        y = y.reshape(b, act.frames, c_out, pr)
        starts = [sum(act.frame_sizes[:i]) for i in range(n)]
        back = comm.all_to_all_shaped([y[:, a:a + size] for a, size in zip(starts, act.frame_sizes)],
                         [(b, f_local, c_out, e - s) for s, e in pos], act.group)
        del y
        return rebuild(torch.cat(back, dim=-1).reshape(b * f_local, c_out, h, w))

    @staticmethod
    def _temporal(module, inner, x, frames, bound, act):
        """The op on all frames of this rank's positions, its GroupNorms with statistics summed over ranks."""
        norms = [m for m in module.modules() if isinstance(m, nn.GroupNorm)]
        with contextlib.ExitStack() as stack:
            stack.enter_context(statistics_reduced_by(act.reduce))
            for m in norms:
                stack.enter_context(attach.replaced_computation(m, group_norm_forward, "distributed"))
            return inner(hidden_states=x, **{**bound, "num_frames": frames})


class FrameParallelHook(ArgumentsHook):
    """On the UNet: this rank's frames of every frame-carrying input, the temporal hooks switched on, the
    output frames all-gathered."""

    def __init__(self, ctx: comm.Context, frame_inputs: dict[str, str]):
        super().__init__()
        self.ctx = ctx
        self.frame_inputs = dict(frame_inputs)
        self.main = next(iter(frame_inputs))
        self.active: _Active | None = None
        self.calls = {"parallel": 0, "replicated": 0}

    def new_forward(self, module, *args, **kwargs):
        inner = self.fn_ref.original_forward
        bound = self.arguments(module, args, kwargs)
        sample = bound.get(self.main)
        n = self.ctx.sp
        if sample is None or sample.ndim != 5 or sample.shape[2] < n or torch.is_grad_enabled():
            # the same decision on every rank (same shapes, same mode)
            self.calls["replicated"] += 1
            return inner(*args, **kwargs)
        frames = sample.shape[2]
        act = _Active(self.ctx, frames)
        f0, f1 = comm.split_range(frames, n, self.ctx.sp_rank)
        call = {name: slice_frames(value, self.frame_inputs.get(name, ""), frames, f0, f1) for name, value in bound.items()}
        self.active = act
        try:
            out = inner(**call)
        finally:
            self.active = None
        tensor, rebuild = unpack_output(out)
        self.calls["parallel"] += 1
        return rebuild(comm.all_gather_cat(tensor, 2, act.group, act.frame_sizes))


def supports(adapter, denoiser: nn.Module) -> bool:
    """A UNet whose adapter names its temporal ops and the frame layout of its inputs."""
    roles = adapter.roles(denoiser)
    return bool(roles.temporal) and bool(adapter.frame_inputs) and not roles.token


def enable(denoiser: nn.Module, adapter, ctx: comm.Context) -> FrameParallelHook:
    hook = attach.wrap_module(denoiser, FrameParallelHook(ctx, adapter.frame_inputs), "distributed", PART)
    for name in adapter.roles(denoiser).temporal:
        attach.wrap_module(denoiser.get_submodule(name), TemporalExchangeHook(hook), "distributed", TEMPORAL_PART)
    return hook
