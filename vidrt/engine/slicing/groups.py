"""Operator grouping for the UNet up blocks (AnimateDiff's *UpBlockMotion, I2VGen-XL's *UpBlock3D).

An up-block layer concatenates the hidden state with a skip connection, then runs a resnet (and, in
AnimateDiff, the spatial transformer right after it). Sliced one module at a time, the concatenated tensor
(hidden + skip channels, e.g. 960 x 64 x 64 per frame in SD1.5's last up block) and the resnet's output
would both exist at full length. Grouped, `cat -> resnet (-> attention)` runs per frame chunk into one
preallocated output; the group ends where the axis changes (the temporal module that follows).

Per layer, in the order the diffusers blocks run them:
  *UpBlockMotion:  [cat -> resnet -> attention]  | motion module (positions)
  *UpBlock3D:      [cat -> resnet]  | temporal conv (positions) | [attention] | temporal attention (positions)

Deferred upsampling: a block's upsampler (nearest x2 -> conv, per frame) would write a full-length tensor
at 4x the block's resolution (640 x 64 x 64 per frame in SD1.5 before the last up block: as large as
the three skip connections that block holds). When the next block is grouped too, the upsampler moves into
that block's first group instead: `[upsample -> cat -> resnet (-> attention)]` per frame chunk, so only the
low-resolution input exists at full length. The next block recognises a deferred input by its size (smaller
than its skip connection), so a step policy that caches or forecasts the block output (TaylorGate,
StepRehash forecast `up_blocks[-2]`) keeps working, on a 4x smaller tensor. A block whose weights are
streamed as one group (diffusers' block-level group offloading) keeps its upsampler: its weights leave the
accelerator as soon as the block returns.
"""
from __future__ import annotations

import contextvars
import inspect

import torch

from vidrt.core.chunks import ranges
from vidrt.engine.attach import call_original
from vidrt.engine.slicing.auto import auto_chunk_samples

IN_GROUP: contextvars.ContextVar = contextvars.ContextVar("vidrt_in_group", default=False)




def is_groupable_up_block(block) -> bool:
    if not (hasattr(block, "resnets") and hasattr(block, "upsamplers")):
        return False
    params = inspect.signature(type(block).forward).parameters
    return "res_hidden_states_tuple" in params and (hasattr(block, "motion_modules") or hasattr(block, "temp_convs"))


def _layers(block):
    n = len(block.resnets)
    attns = list(block.attentions) if hasattr(block, "attentions") else [None] * n
    if hasattr(block, "motion_modules"):
        return [[("resnet", block.resnets[i]), ("attn", attns[i]), ("motion", block.motion_modules[i])]
                for i in range(n)]
    tattn = list(block.temp_attentions) if hasattr(block, "temp_attentions") else [None] * n
    return [[("resnet", block.resnets[i]), ("tconv", block.temp_convs[i]), ("attn", attns[i]),
             ("tattn", tattn[i])] for i in range(n)]


def _cut(value, n: int, s: int, e: int):
    if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == n:
        return value[s:e]
    return value


def make_up_block_forward(config, defer_upsample: bool = False, previous_upsamplers=None):
    """`defer_upsample`: this block's upsampler runs inside the next block's first group (the next block is
    grouped too). `previous_upsamplers`: the upsamplers of the block before, applied here when its output
    arrives not yet upsampled."""

    def forward(block, *args, **kwargs):
        try:
            bound = inspect.signature(type(block).forward).bind(block, *args, **kwargs)
        except TypeError:
            return call_original(block, *args, **kwargs)
        a = dict(bound.arguments)
        a.pop("self", None)
        extra_args, extra_kwargs = a.pop("args", ()), a.pop("kwargs", {})
        freeu = all(getattr(block, k, None) for k in ("s1", "s2", "b1", "b2"))
        if not (extra_args or extra_kwargs or freeu or torch.is_grad_enabled()):
            return grouped_up_block(block, a, config, defer_upsample, previous_upsamplers)
        pending = _pending_upsample(a, previous_upsamplers)
        if pending is not None:  # the block before deferred its upsampler: apply it before the stock forward
            args, kwargs = _with_hidden_states(block, args, kwargs, _upsample(previous_upsamplers, *pending))
        return call_original(block, *args, **kwargs)

    return forward


def _streamed_as_a_block(block) -> bool:
    """True when an offloading hook moves the block's weights as one unit (diffusers group offloading at
    block level, or an FSDP2 shard unit): they are gone when the block returns, so its upsampler cannot run
    later. Leaf-level
    streaming hooks every conv itself, and model offload keeps the whole denoiser resident: both are fine."""
    registry = getattr(block, "_diffusers_hook", None)
    if registry is not None and registry.get_hook("group_offloading") is not None:
        return True
    # FSDP2 (vidrt.engine.distributed.shard): the block's weights are gathered for its call and resharded after it
    return any(c.__name__ == "FSDPModule" for c in type(block).__mro__)


def _pending_upsample(a: dict, previous_upsamplers):
    """(hidden_states, size) when the block's input (bound arguments `a`) still needs the previous block's
    upsampler - it is smaller than the skip it will be concatenated with - else None."""
    h, skips = a.get("hidden_states"), a.get("res_hidden_states_tuple")
    if previous_upsamplers is None or h is None or not skips or tuple(h.shape[-2:]) == tuple(skips[-1].shape[-2:]):
        return None
    size = tuple(skips[-1].shape[-2:])
    # diffusers passes upsample_size only when the size is not exactly 2x (odd latent sizes)
    return h, (None if size == (2 * h.shape[-2], 2 * h.shape[-1]) else size)


def _upsample(upsamplers, h: torch.Tensor, size):
    for up in upsamplers:
        h = up(h, size)
    return h


def _with_hidden_states(block, args, kwargs, h):
    if "hidden_states" in kwargs or not args:
        return args, {**kwargs, "hidden_states": h}
    return (h, *args[1:]), kwargs


def grouped_up_block(block, a: dict, config, defer_upsample: bool = False, previous_upsamplers=None):
    h = a["hidden_states"]
    skips = tuple(a["res_hidden_states_tuple"])
    temb = a.get("temb")
    ehs = a.get("encoder_hidden_states")
    num_frames = a.get("num_frames", 1)
    cak = a.get("cross_attention_kwargs")
    attn_kwargs = {k: a[k] for k in ("attention_mask", "encoder_attention_mask") if a.get(k) is not None}
    n = h.shape[0]
    pending = _pending_upsample(a, previous_upsamplers)
    upsample = None
    if pending is not None:
        size = pending[1]
        upsample = lambda x: _upsample(previous_upsamplers, x, size)  # noqa: E731
    per_sample = h[:1].numel() * (4 if upsample is not None else 1)
    chunk = config.chunk_frames or auto_chunk_samples(n, per_sample, config.on_accelerator(h.device))

    for layer in _layers(block):
        skip = skips[-1]
        skips = skips[:-1]
        ops = [(kind, mod) for kind, mod in layer if mod is not None]
        i = 0
        while i < len(ops):
            kind, mod = ops[i]
            if kind in ("resnet", "attn"):
                group = [ops[i]]
                while i + 1 < len(ops) and ops[i + 1][0] == "attn" and group[-1][0] == "resnet":
                    i += 1
                    group.append(ops[i])
                h = _run_spatial_group(group, h, skip if kind == "resnet" else None, temb, ehs, cak, attn_kwargs,
                                       n, chunk, upsample)
                upsample = None
                if kind == "resnet":
                    skip = None
            elif kind == "motion":
                h = mod(h, num_frames=num_frames)
            elif kind == "tconv":
                h = mod(h, num_frames=num_frames)
            elif kind == "tattn":
                h = mod(h, num_frames=num_frames, cross_attention_kwargs=cak, return_dict=False)[0]
            i += 1
        del skip

    if upsample is not None:  # a block without spatial ops: cannot happen in diffusers' UNets, stay correct
        h = upsample(h)
    if block.upsamplers is not None and not (defer_upsample and not _streamed_as_a_block(block)):
        h = _upsample(block.upsamplers, h, a.get("upsample_size"))
    return h


def _run_spatial_group(group, h, skip, temb, ehs, cak, attn_kwargs, n: int, chunk: int, upsample=None):
    out = None
    token = IN_GROUP.set(True)
    try:
        for s, e in ranges(n, chunk):
            x = h[s:e] if upsample is None else upsample(h[s:e])
            for kind, mod in group:
                if kind == "resnet":
                    if skip is not None:
                        x = torch.cat([x, skip[s:e]], dim=1)
                    x = mod(x, _cut(temb, n, s, e))
                else:
                    kw = {k: _cut(v, n, s, e) for k, v in attn_kwargs.items()}
                    x = mod(x, encoder_hidden_states=_cut(ehs, n, s, e), cross_attention_kwargs=cak,
                            return_dict=False, **kw)[0]
            if out is None:
                out = x.new_empty((n, *x.shape[1:]))
            out[s:e] = x
            del x
    finally:
        IN_GROUP.reset(token)
    return out
