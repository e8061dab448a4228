"""CFG parallel: the guidance streams of a step run on different ranks; every rank ends up with the same
noise predictions, so every rank runs the same pipeline loop and scheduler and stays in lockstep.

Two shapes of CFG exist in the supported pipelines:
- *pair*: WanPipeline calls the denoiser twice per step, inside `cache_context("cond")` then `("uncond")`,
  with the same latents and timestep and the prompt / negative-prompt embeddings. On the "cond" call rank i
  of the CFG group runs stream i (0 = cond, 1 = uncond, whose embeddings were captured from
  `pipe.encode_prompt`); the two outputs are all-gathered; the cond output is returned and the uncond one
  is returned by the following "uncond" call without computing anything.
- *batch*: AnimateDiff / I2VGen-XL concatenate uncond+cond into one batch of 2. Rank i takes batch slice i
  of every batch-carrying argument (a tensor whose first dim is a multiple of the batch; rows ordered
  batch-major, as for per-frame text embeddings), and the outputs are all-gathered back into the batch.

Both are exact: each stream is computed by the same modules on the same inputs as in one process.
"""
from __future__ import annotations

from typing import Any

import torch
from diffusers.hooks.hooks import CacheContext, _set_cache_context
from torch import nn

from vidrt.engine import attach
from vidrt.engine.attach import ContextHook
from vidrt.engine.distributed import comm

PART = "cfg"


class CfgParallelHook(ContextHook):
    def __init__(self, ctx: comm.Context, main_input: str):
        super().__init__()
        self.ctx = ctx
        self.main_input = main_input
        self.negative: torch.Tensor | None = None   # captured uncond embeddings (pair mode)
        self.pending: tuple[Any, Any] | None = None  # (key, uncond output) waiting for the uncond call
        self.calls = {"pair": 0, "pair_reused": 0, "batch": 0, "replicated": 0}

    def reset_state(self, module):
        self.pending = None
        return module

    # ----------------------------------------------------------------------------------------------
    def new_forward(self, module, *args, **kwargs):
        inner = self.fn_ref.original_forward
        bound = self.arguments(module, args, kwargs)
        context = self.cache_context
        name = context.name if context is not None else None
        sample = bound.get(self.main_input)
        n = self.ctx.cfg

        if name == "uncond" and self.pending is not None:
            key, out = self.pending
            self.pending = None
            if key == _key(sample, bound):
                self.calls["pair_reused"] += 1
                return out
        self.pending = None
        if (name == "cond" and n == 2 and self.negative is not None
                and "encoder_hidden_states" in bound and sample is not None):
            return self._pair(module, inner, bound, context, sample)
        if sample is not None and sample.shape[0] % n == 0 and sample.shape[0] >= n:
            return self._batch(inner, bound, sample)
        self.calls["replicated"] += 1
        return inner(**bound)

    def _pair(self, module, inner, bound, context: CacheContext, sample):
        mine = dict(bound)
        if self.ctx.cfg_rank == 1:
            ehs = bound["encoder_hidden_states"]
            mine["encoder_hidden_states"] = self.negative.to(device=ehs.device, dtype=ehs.dtype)
            _set_cache_context(module, CacheContext("uncond", context.step_index, context.num_inference_steps,
                                                    context.timestep, context.sigma))
        try:
            out = inner(**mine)
        finally:
            if self.ctx.cfg_rank == 1:
                _set_cache_context(module, context)
        tensor, rebuild = unpack_output(out)
        cond, uncond = comm.all_gather_list(tensor, self.ctx.groups["cfg"], 2)
        self.pending = (_key(sample, bound), rebuild(uncond))
        self.calls["pair"] += 1
        return rebuild(cond)

    def _batch(self, inner, bound, sample):
        n, r = self.ctx.cfg, self.ctx.cfg_rank
        b = sample.shape[0]
        mine = {k: _take(v, b, n, r) for k, v in bound.items()}
        out = inner(**mine)
        tensor, rebuild = unpack_output(out)
        full = comm.all_gather_cat(tensor, 0, self.ctx.groups["cfg"], [tensor.shape[0]] * n)
        self.calls["batch"] += 1
        return rebuild(full)


def _key(sample, bound) -> tuple:
    t = bound.get("timestep")
    return (id(sample), id(t))


def _take(value, batch: int, n: int, r: int):
    """Slice r of n of a batch-carrying argument (first dim a multiple of `batch`, rows batch-major)."""
    if isinstance(value, dict):
        return {k: _take(v, batch, n, r) for k, v in value.items()}
    if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] >= batch and value.shape[0] % batch == 0:
        return value.chunk(n, dim=0)[r]
    return value


def unpack_output(out):
    """(the output tensor, a function that builds the same output type around another tensor)."""
    if isinstance(out, torch.Tensor):
        return out, (lambda t: t)
    if isinstance(out, tuple):
        return out[0], (lambda t: (t, *out[1:]))
    return out.sample, (lambda t: type(out)(sample=t))


def capture_negative(pipe, hook: CfgParallelHook) -> None:
    """Wrap `pipe.encode_prompt` so the hook learns the negative embeddings the pipeline will use."""

    def encode_prompt(call, *args, **kwargs):
        out = call(*args, **kwargs)
        if isinstance(out, tuple) and len(out) >= 2:
            hook.negative = out[1]
        return out

    attach.wrap_method(pipe, "encode_prompt", encode_prompt, "distributed")


def enable(denoiser: nn.Module, ctx: comm.Context, main_input: str) -> CfgParallelHook:
    return attach.wrap_module(denoiser, CfgParallelHook(ctx, main_input), "distributed", PART)
