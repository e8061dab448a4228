"""Feature slicer for the UNet families (AnimateDiff's UNetMotionModel, I2VGen-XL's I2VGenXLUNet).

In both UNets the hidden state is (batch*frames, C, H, W).
- spatial modules (ResnetBlock2D, Transformer2DModel, Down/Upsample2D) treat every sample of that axis
  alone: run them on chunks of it, passing the matching rows of every per-sample argument (temb, text
  context repeated per frame, masks), and write each chunk into a preallocated output;
- temporal transformers (AnimateDiffTransformer3D, TransformerTemporalModel) attend over frames at one
  position: run proj_in -> blocks -> proj_out -> residual on chunks of positions; their entry GroupNorm
  spans all positions, so it uses two-pass global statistics (groupnorm.py);
- I2VGen-XL's TemporalConvLayer (4 x GroupNorm -> SiLU -> Conv3d(3,1,1)) is separable per position except
  for the norms: each stage gets global statistics, then runs per position chunk into the next stage.
"""
from __future__ import annotations

import inspect

import torch
from torch import nn

from vidrt.core.chunks import ranges
from vidrt.engine.attach import call_original
from vidrt.engine.slicing.auto import auto_chunk_positions, auto_chunk_samples
from vidrt.engine.slicing.groups import IN_GROUP
from vidrt.engine.slicing.groupnorm import group_stats, normalize_chunk




# ---------------------------------------------------------------------------------------------- spatial
def _first_tensor(args, kwargs):
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    for key in ("hidden_states", "input_tensor", "inputs", "x"):
        if isinstance(kwargs.get(key), torch.Tensor):
            return kwargs[key]
    return None


def _cut(value, n: int, s: int, e: int):
    if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == n:
        return value[s:e]
    return value


class _Gather:
    """Collects chunk outputs (a tensor, a tuple of tensors, or a diffusers output) into preallocated tensors."""

    def __init__(self, n: int):
        self.n = n
        self.kind = None
        self.bufs: list = []

    def add(self, out, s: int, e: int) -> None:
        if self.kind is None:
            if isinstance(out, torch.Tensor):
                self.kind, parts = "tensor", [out]
            elif isinstance(out, (tuple, list)):
                self.kind, parts = type(out), list(out)
            elif hasattr(out, "to_tuple"):
                self.kind, self.keys, parts = ("output", type(out)), list(out.keys()), list(out.to_tuple())
            else:
                raise TypeError(f"unsupported output {type(out).__name__}")
            self.bufs = [p.new_empty((self.n, *p.shape[1:])) if isinstance(p, torch.Tensor) else p for p in parts]
        parts = [out] if self.kind == "tensor" else (list(out.to_tuple()) if isinstance(self.kind, tuple) else list(out))
        for buf, part in zip(self.bufs, parts):
            if isinstance(buf, torch.Tensor):
                buf[s:e] = part

    def result(self):
        if self.kind == "tensor":
            return self.bufs[0]
        if isinstance(self.kind, tuple):
            return self.kind[1](**dict(zip(self.keys, self.bufs)))
        return self.kind(self.bufs)


def make_spatial_forward(config):
    def forward(module, *args, **kwargs):
        x = _first_tensor(args, kwargs)
        if x is None or x.ndim < 1 or torch.is_grad_enabled() or IN_GROUP.get():
            return call_original(module, *args, **kwargs)
        n = x.shape[0]
        chunk = config.chunk_frames or auto_chunk_samples(n, x[:1].numel(), config.on_accelerator(x.device))
        if chunk >= n:
            return call_original(module, *args, **kwargs)
        gather = _Gather(n)
        for s, e in ranges(n, chunk):
            a = [_cut(v, n, s, e) for v in args]
            kw = {k: _cut(v, n, s, e) for k, v in kwargs.items()}
            out = call_original(module, *a, **kw)
            gather.add(out, s, e)
            del out, a, kw
        return gather.result()

    return forward


# --------------------------------------------------------------------------------------------- temporal
def is_temporal_conv(module: nn.Module) -> bool:
    return all(isinstance(getattr(module, f"conv{i}", None), nn.Sequential) for i in range(1, 5))


def _conv_stage_ok(seq: nn.Sequential) -> bool:
    if not isinstance(seq[0], nn.GroupNorm):
        return False
    for m in seq[1:]:
        if isinstance(m, nn.Conv3d):
            if tuple(m.kernel_size[1:]) != (1, 1) or tuple(m.stride) != (1, 1, 1) or \
                    tuple(m.padding[1:]) != (0, 0) or tuple(m.dilation[1:]) != (1, 1):
                return False
        elif not isinstance(m, (nn.SiLU, nn.Dropout, nn.Identity)):
            return False
    return True


def make_temporal_conv_forward(config):
    def forward(module, hidden_states, num_frames: int = 1, *args, **kwargs):
        stages = [getattr(module, f"conv{i}") for i in range(1, 5)]
        if args or kwargs or torch.is_grad_enabled() or module.training or not all(map(_conv_stage_ok, stages)):
            return call_original(module, hidden_states, num_frames, *args, **kwargs)
        bf, c, h, w = hidden_states.shape
        b, f, p = bf // num_frames, num_frames, h * w
        chunk = config.chunk_positions or auto_chunk_positions(p, b * f * c, config.on_accelerator(hidden_states.device))
        x = hidden_states.reshape(b, f, c, p).permute(0, 2, 1, 3)  # (b, C, F, P), the identity branch
        cur = x
        out = None
        for i, seq in enumerate(stages):
            norm, rest = seq[0], seq[1:]
            mean, rstd = group_stats(cur, norm.num_groups, norm.eps, chunk)
            last = i == len(stages) - 1
            nxt = None
            for s, e in ranges(p, chunk):
                y = normalize_chunk(cur[..., s:e], norm, mean, rstd)
                y = rest(y.unsqueeze(-1)).squeeze(-1)                       # (b, C', F, pc)
                if last:
                    if out is None:
                        out = y.new_empty((b, f, y.shape[1], p))            # = (b*F, C, H, W) memory order
                    out.permute(0, 2, 1, 3)[..., s:e] = x[..., s:e] + y
                else:
                    if nxt is None:
                        nxt = y.new_empty((b, y.shape[1], f, p))
                    nxt[..., s:e] = y
                del y
            cur = nxt
        return out.reshape(bf, out.shape[2], h, w)

    return forward


def make_temporal_transformer_forward(config):
    def forward(module, hidden_states, encoder_hidden_states=None, timestep=None, class_labels=None,
                num_frames: int = 1, cross_attention_kwargs=None, *args, **kwargs):
        wants_output = "return_dict" in inspect.signature(type(module).forward).parameters
        return_dict = kwargs.pop("return_dict", args[0] if args else True) if wants_output else None
        if (args and not wants_output) or kwargs or torch.is_grad_enabled() or \
                encoder_hidden_states is not None or timestep is not None or class_labels is not None or \
                not isinstance(getattr(module, "norm", None), nn.GroupNorm):
            extra = {"return_dict": return_dict} if wants_output else {}
            return call_original(module, hidden_states, encoder_hidden_states, timestep, class_labels, num_frames,
                                 cross_attention_kwargs, **extra, **kwargs)
        bf, c, h, w = hidden_states.shape
        b, f, p = bf // num_frames, num_frames, h * w
        chunk = config.chunk_positions or auto_chunk_positions(p, b * f * c, config.on_accelerator(hidden_states.device))
        residual = hidden_states.reshape(b, f, c, p)
        x = residual.permute(0, 2, 1, 3)  # (b, C, F, P)
        norm = module.norm
        mean, rstd = group_stats(x, norm.num_groups, norm.eps, chunk)
        out = hidden_states.new_empty((b, f, c, p))
        for s, e in ranges(p, chunk):
            pc = e - s
            y = normalize_chunk(x[..., s:e], norm, mean, rstd)           # (b, C, F, pc)
            y = y.permute(0, 3, 2, 1).reshape(b * pc, f, c)
            y = module.proj_in(y)
            for block in module.transformer_blocks:
                y = block(hidden_states=y, encoder_hidden_states=None, timestep=None,
                          cross_attention_kwargs=cross_attention_kwargs, class_labels=None)
            y = module.proj_out(y)
            y = y.reshape(b, pc, f, c).permute(0, 2, 3, 1)                # (b, F, C, pc)
            out[..., s:e] = y + residual[..., s:e]
            del y
        output = out.reshape(bf, c, h, w)
        if not wants_output:
            return output
        if not return_dict:
            return (output,)
        from diffusers.models.transformers.transformer_temporal import TransformerTemporalModelOutput

        return TransformerTemporalModelOutput(sample=output)

    return forward
