"""Sequence parallel for Wan's DiT inside one denoiser call.

Each rank of the sequence group owns a contiguous range of the token sequence (patch embedding, every
block and the output projection run on its tokens only); only the final projected tokens are all-gathered.
Self-attention needs every token's K/V: per block, per *head group*, each rank computes its tokens' K/V
for those heads, the group's K/V are all-gathered (full sequence, a few heads), and the rank's queries
attend to them for those heads. A head group's K/V is all that is ever full-length on a rank — never the
residual stream, nor all heads' K/V at once. Everything else in a block is per token.

Ulysses (DeepSpeed-Ulysses; the default when the head count divides by the sequence ranks): each rank computes
q/k/v of its own tokens for all heads, one all-to-all trades token ranges for head ranges so each rank holds
the full sequence for heads/N heads, attention runs there, and a second all-to-all trades the outputs back.
It moves 1/N of the bytes the K/V all-gather moves; the all-gather path (`attention="gather"`) is kept for
head counts that do not divide and for the smallest peak (one head group's K/V at a time).

Wan normalises q and k with an RMSNorm across all heads; the per-token statistic (mean of squares over
the full row) is computed once per block in a first pass, so a head group's q/k are exactly the
corresponding columns of the normalised full row. Inside the rank, work still runs in token chunks
(the Feature Slicer's `chunk_tokens`, or 1/N of its auto chunk for the whole sequence).
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from vidrt.core.chunks import ranges
from vidrt.core.errors import VidrtError
from vidrt.engine import attach
from vidrt.engine.attach import ArgumentsHook
from vidrt.engine.distributed import comm
from vidrt.engine.distributed.shard import gathered
from vidrt.engine.slicing import SlicingConfig, slicing_state
from vidrt.engine.slicing.auto import auto_chunk_tokens
from vidrt.engine.slicing.wan_ops import (ChunkedRope, attend, block_supported, blocks_hooked, cross_attention_kv,
                                          cross_attention_out, modulation, output_head, project, rotate, unpatchify,
                                          wan_conditioning)

PART = "sequence"


def _proj_cols(attn, x: torch.Tensor, which: str, c0: int, c1: int) -> torch.Tensor:
    """Columns [c0, c1) of q/k/v (= a group of heads) without computing the others when not fused."""
    if not getattr(attn, "fused_projections", False):
        lin = {"q": attn.to_q, "k": attn.to_k, "v": attn.to_v}[which]
        b = None if lin.bias is None else lin.bias[c0:c1]
        return F.linear(x, lin.weight[c0:c1], b)
    return project(attn, x, which)[..., c0:c1]


def _rms_stat(norm: nn.Module, y: torch.Tensor):
    """Per-token 1/rms of the full row for an RMSNorm (None when the norm is not an RMSNorm)."""
    if isinstance(norm, nn.RMSNorm):
        eps = norm.eps if norm.eps is not None else torch.finfo(y.dtype).eps
        return torch.rsqrt(y.float().pow(2).mean(-1, keepdim=True) + eps)
    return None


def _norm_cols(norm: nn.Module, y_cols: torch.Tensor, stat, c0: int, c1: int, full=None) -> torch.Tensor:
    if isinstance(norm, nn.Identity):
        return y_cols
    if stat is not None:
        w = norm.weight[c0:c1].float() if norm.weight is not None else 1.0
        return (y_cols.float() * stat * w).type_as(y_cols)
    return norm(full)[..., c0:c1]  # any other norm: normalise the full row, keep the columns


def _ulysses_attention(attn1, modulated, heads_of, attn_out: torch.Tensor, sizes: list[int], group, chunk: int,
                       rounds: int, dh: int) -> None:
    """Ulysses self-attention into `attn_out` (B, n_local, dim), in `rounds` rounds: in each, every rank owns
    a few heads of its share (heads/N per rank in all); for k, v, then q in turn it computes its tokens' values
    for the round heads of every rank and one all-to-all gives it the full sequence of its own round heads;
    it attends, and a second all-to-all returns each rank its tokens' outputs. Per round a rank holds the
    full-length q/k/v of only its round heads, one at a time in flight, so the peak stays near the K/V
    gather's while moving 1/N of its bytes."""
    B, n_local, dim = attn_out.shape
    n = len(sizes)
    per_rank = dim // dh // n
    starts = [sum(sizes[:i]) for i in range(n)]
    for a, b in (comm.split_range(per_rank, rounds, i) for i in range(rounds)):
        if a == b:
            continue
        k = b - a
        owned = [(j * per_rank + a, j * per_rank + b) for j in range(n)]   # round heads of each rank

        def full_sequence(which: str) -> torch.Tensor:
            local = attn_out.new_empty((n, B, n_local, k, dh))
            for s, e in ranges(n_local, chunk):
                h = modulated(s, e)
                for j, (h0, h1) in enumerate(owned):
                    local[j, :, s:e] = heads_of(which, h, s, e, h0, h1)
                del h
            return comm.all_to_all_tokens(local, sizes, group)            # (B, n_tokens, k, dh)

        key, value = full_sequence("k"), full_sequence("v")
        query = full_sequence("q")
        out = attn_out.new_empty((B, query.shape[1], k * dh))
        for s, e in ranges(query.shape[1], chunk):
            out[:, s:e] = attend(attn1, query[:, s:e], key, value)
        del query, key, value
        back = comm.all_to_all_shaped([out[:, st:st + size] for st, size in zip(starts, sizes)],
                                      [(B, n_local, k * dh)] * n, group)
        del out
        for (h0, h1), piece in zip(owned, back):
            attn_out[:, :, h0 * dh:h1 * dh] = piece
        del back


def sp_block(block, x: torch.Tensor, encoder_hidden_states, temb, rope: ChunkedRope, g0: int, n_tokens: int,
             sizes: list[int], group, chunk: int, head_groups: int, ulysses: bool = False) -> torch.Tensor:
    """One WanTransformerBlock on this rank's tokens [g0, g0 + x.shape[1]) of `n_tokens`; written in place."""
    B, n_local, dim = x.shape
    mods, at = modulation(block, temb, n_tokens)
    shift_msa, scale_msa, gate_msa, c_shift, c_scale, c_gate = mods
    attn1, attn2 = block.attn1, block.attn2
    heads = attn1.heads
    dh = dim // heads
    generic_q = not isinstance(attn1.norm_q, (nn.RMSNorm, nn.Identity))
    generic_k = not isinstance(attn1.norm_k, (nn.RMSNorm, nn.Identity))

    def modulated(s, e):
        xs = x[:, s:e]
        return (block.norm1(xs.float()) * (1 + at(scale_msa, g0 + s, g0 + e)) + at(shift_msa, g0 + s, g0 + e)
                ).type_as(xs)

    # Pass 1: per-token RMS statistics of q and k over all heads (B, n_local, 1) fp32.
    stat_q = stat_k = None
    if isinstance(attn1.norm_q, nn.RMSNorm) or isinstance(attn1.norm_k, nn.RMSNorm):
        stat_q = x.new_empty((B, n_local, 1), dtype=torch.float32) if isinstance(attn1.norm_q, nn.RMSNorm) else None
        stat_k = x.new_empty((B, n_local, 1), dtype=torch.float32) if isinstance(attn1.norm_k, nn.RMSNorm) else None
        for s, e in ranges(n_local, chunk):
            n = modulated(s, e)
            if stat_q is not None:
                stat_q[:, s:e] = _rms_stat(attn1.norm_q, project(attn1, n, "q"))
            if stat_k is not None:
                stat_k[:, s:e] = _rms_stat(attn1.norm_k, project(attn1, n, "k"))
            del n

    def heads_of(which: str, n: torch.Tensor, s: int, e: int, h0: int, h1: int) -> torch.Tensor:
        """q, k (normalised over the full row, rotated) or v of local tokens [s, e) for heads [h0, h1)."""
        c0, c1 = h0 * dh, h1 * dh
        y = _proj_cols(attn1, n, which, c0, c1)
        if which != "v":
            norm, stat = (attn1.norm_q, stat_q) if which == "q" else (attn1.norm_k, stat_k)
            generic = generic_q if which == "q" else generic_k
            y = _norm_cols(norm, y, None if stat is None else stat[:, s:e], c0, c1,
                           full=project(attn1, n, which) if generic else None)
        y = y.unflatten(2, (h1 - h0, dh))
        if which == "v":
            return y
        cos, sin = rope.chunk(g0 + s, g0 + e)
        return rotate(y, cos, sin)

    attn_out = x.new_empty((B, n_local, dim))
    if ulysses:
        _ulysses_attention(attn1, modulated, heads_of, attn_out, sizes, group, chunk, head_groups, dh)
    else:
        # Self-attention per head group: local K/V of the group -> all-gather -> local queries attend.
        for h0, h1 in (comm.split_range(heads, head_groups, i) for i in range(head_groups)):
            if h0 == h1:
                continue
            kv = x.new_empty((2, B, n_local, h1 - h0, dh))
            for s, e in ranges(n_local, chunk):
                n = modulated(s, e)
                kv[0, :, s:e] = heads_of("k", n, s, e, h0, h1)
                kv[1, :, s:e] = heads_of("v", n, s, e, h0, h1)
                del n
            full = comm.all_gather_cat(kv, 2, group, sizes)   # (2, B, n_tokens, h, dh)
            del kv
            key, value = full[0], full[1]
            for s, e in ranges(n_local, chunk):
                n = modulated(s, e)
                attn_out[:, s:e, h0 * dh:h1 * dh] = attend(attn1, heads_of("q", n, s, e, h0, h1), key, value)
                del n
            del full, key, value

    # Cross-attention K/V (text, and image for I2V), once per block.
    ck, cv, ck_img, cv_img = cross_attention_kv(attn2, encoder_hidden_states, heads)

    # Everything else per local token chunk, in place into the rank's residual stream.
    for s, e in ranges(n_local, chunk):
        gs, ge = g0 + s, g0 + e
        xs = x[:, s:e]
        xf = xs.float()
        a = attn1.to_out[1](attn1.to_out[0](attn_out[:, s:e]))
        y = (xf + a * at(gate_msa, gs, ge)).type_as(xs)
        del xf, a
        y = y + cross_attention_out(block, y, heads, ck, cv, ck_img, cv_img)
        n = (block.norm3(y.float()) * (1 + at(c_scale, gs, ge)) + at(c_shift, gs, ge)).type_as(y)
        f = block.ffn(n)
        del n
        x[:, s:e] = (y.float() + f.float() * at(c_gate, gs, ge)).type_as(y)
        del f, y
    return x


class SequenceParallelHook(ArgumentsHook):
    """Runs a WanTransformer3DModel call split over the sequence group (the inner forward is not called)."""

    def __init__(self, ctx: comm.Context, head_groups: int | None = None, attention: str = "auto"):
        super().__init__()
        self.ctx = ctx
        self.head_groups = head_groups
        self.attention = attention
        self.calls = {"parallel": 0, "replicated": 0}

    def new_forward(self, module, *args, **kwargs):
        bound = self.arguments(module, args, kwargs)
        extra = set(bound) - {"hidden_states", "timestep", "encoder_hidden_states", "encoder_hidden_states_image",
                              "return_dict", "attention_kwargs"}
        if (extra or torch.is_grad_enabled() or blocks_hooked(module)
                or not all(block_supported(b) for b in module.blocks)):
            # Same decision on every rank (same module state): compute the whole call on each rank.
            self.calls["replicated"] += 1
            return self.fn_ref.original_forward(*args, **kwargs)
        self.calls["parallel"] += 1
        return sp_model(module, self.ctx, bound["hidden_states"], bound["timestep"], bound["encoder_hidden_states"],
                        bound.get("encoder_hidden_states_image"), bound.get("return_dict", True), self.head_groups,
                        self.attention)


def uses_ulysses(heads: int, ranks: int, attention: str) -> bool:
    """auto: Ulysses when the heads divide by the ranks; "ulysses" insists (one clear error otherwise)."""
    if attention not in ("auto", "ulysses", "gather"):
        raise VidrtError(f"distributed: attention {attention!r} is not one of auto, ulysses, gather")
    if attention == "ulysses" and heads % ranks:
        raise VidrtError(f"distributed: Ulysses needs the {heads} attention heads to divide by the {ranks} "
                         "sequence ranks; use attention=gather (VIDRT_DIST_ATTENTION)")
    return attention != "gather" and heads % ranks == 0


def sp_model(model, ctx: comm.Context, hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image,
             return_dict, head_groups: int | None, attention: str = "auto"):
    group, n, r = ctx.groups["sp"], ctx.sp, ctx.sp_rank
    batch_size, _, num_frames, height, width = hidden_states.shape
    p_t, p_h, p_w = model.config.patch_size
    ppf, pph, ppw = num_frames // p_t, height // p_h, width // p_w
    per_frame = pph * ppw
    n_tokens = ppf * per_frame
    sizes = [e - s for s, e in (comm.split_range(n_tokens, n, i) for i in range(n))]
    g0, g1 = comm.split_range(n_tokens, n, r)
    dim = model.config.num_attention_heads * model.config.attention_head_dim
    state = slicing_state(model)
    config = state.config if state is not None else SlicingConfig()
    # auto: 1/N of the single-process chunk (whose floor would otherwise keep a rank's FFN chunk as large as one
    # process's), at least 256 tokens
    chunk = config.chunk_tokens or min(max(1, g1 - g0), max(256, auto_chunk_tokens(
        n_tokens, dim, model.config.ffn_dim, config.on_accelerator(hidden_states.device)) // n))
    heads = model.config.num_attention_heads
    ulysses = uses_ulysses(heads, n, attention)
    # gather: K/V in `groups` head groups (default one per head); Ulysses: `groups` rounds (default one head per
    # rank per round)
    groups = max(1, min(heads // n if ulysses else heads, head_groups or heads))

    rope = ChunkedRope(model.rope, hidden_states, ppf, pph, ppw)

    # Patch embedding of the frames that hold this rank's tokens only.
    f0, f1 = g0 // per_frame, -(-g1 // per_frame)
    emb = model.patch_embedding(hidden_states[:, :, f0 * p_t:f1 * p_t]).flatten(2).transpose(1, 2)
    tokens = emb[:, g0 - f0 * per_frame:g1 - f0 * per_frame].contiguous()
    del emb

    temb, timestep_proj, encoder_hidden_states = wan_conditioning(
        model, timestep, encoder_hidden_states, encoder_hidden_states_image)

    for block in model.blocks:
        with gathered(block):   # (FSDP-sharded weights: the block is not called, so gather them here)
            tokens = sp_block(block, tokens, encoder_hidden_states, timestep_proj, rope, g0, n_tokens, sizes,
                              group, chunk, groups, ulysses)

    local = output_head(model, tokens, temb, chunk, offset=g0)   # output norm -> modulate -> projection
    del tokens
    projected = comm.all_gather_cat(local, 1, group, sizes)
    del local
    return unpatchify(projected, (batch_size, ppf, pph, ppw), model.config.patch_size, return_dict)


def supports(denoiser: nn.Module) -> bool:
    """True for a DiT whose blocks this sequence-parallel forward knows (Wan's)."""
    return hasattr(denoiser, "blocks") and hasattr(denoiser, "condition_embedder") and \
        all(block_supported(b) for b in denoiser.blocks)


def enable(denoiser: nn.Module, ctx: comm.Context, head_groups: int | None = None,
           attention: str = "auto") -> SequenceParallelHook:
    return attach.wrap_module(denoiser, SequenceParallelHook(ctx, head_groups, attention), "distributed", PART)
