"""Wan block maths on token ranges (diffusers `WanTransformer3DModel` / `WanTransformerBlock`), shared by the
sliced forward (wan.py) and the sequence-parallel forward (vidrt.engine.distributed.wan_sp). Every function
computes what diffusers computes for the tokens it is given, in the same order and dtype."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vidrt.core.chunks import ranges
from vidrt.engine.attach import STREAMING_HOOKS, hook_name

# Hooks that never keep a block's tensors past the call without copying them (weight streaming moves weights
# only; step policies copy what they keep): a block under them may write its output into its input.
TRANSPARENT_HOOKS = STREAMING_HOOKS + (hook_name("policy"),)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding on (B, L, H, D) with (1, L, 1, D) cos/sin — the same arithmetic as diffusers."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos = cos[..., 0::2]
    sin = sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


class ChunkedRope:
    """Wan's rotary table for token ranges, built per chunk instead of as one (1, L, 1, D) tensor pair.

    Token i sits at frame i // (H*W), row (i // W) % H, column i % W; its cos/sin row is the concatenation
    of the frame/row/column tables at those indices — the same values diffusers' WanRotaryPosEmbed expands.
    """

    def __init__(self, rope, hidden_states, ppf: int, pph: int, ppw: int):
        self.rope, self.hidden_states = rope, hidden_states
        self.pph, self.ppw = pph, ppw
        split = [rope.t_dim, rope.h_dim, rope.w_dim]
        self.cos = rope.freqs_cos.split(split, dim=1)
        self.sin = rope.freqs_sin.split(split, dim=1)

    def chunk(self, s: int, e: int):
        idx = torch.arange(s, e, device=self.rope.freqs_cos.device)
        per_frame = self.pph * self.ppw
        parts = (idx // per_frame, (idx // self.ppw) % self.pph, idx % self.ppw)
        cos = torch.cat([t[i] for t, i in zip(self.cos, parts)], dim=-1)
        sin = torch.cat([t[i] for t, i in zip(self.sin, parts)], dim=-1)
        return cos.view(1, e - s, 1, -1), sin.view(1, e - s, 1, -1)

    def full(self):
        return self.rope(self.hidden_states)


def rope_chunk(rotary_emb, s: int, e: int):
    if rotary_emb is None:
        return None
    if isinstance(rotary_emb, ChunkedRope):
        return rotary_emb.chunk(s, e)
    cos, sin = rotary_emb
    return cos[:, s:e], sin[:, s:e]


def linear_rows(x: torch.Tensor, w: torch.Tensor, b, s: int, e: int) -> torch.Tensor:
    """Rows s:e of a fused projection. Its module's forward never runs, so a leaf-level offloading hook never
    onloads it: the rows are fetched to the input's device (a no-op when resident)."""
    return F.linear(x, w[s:e].to(x.device), None if b is None else b[s:e].to(x.device))


def project(attn, x: torch.Tensor, which: str) -> torch.Tensor:
    """One of q/k/v of a WanAttention, also when its projections are fused."""
    if getattr(attn, "fused_projections", False):
        if not attn.is_cross_attention:
            w, b = attn.to_qkv.weight, attn.to_qkv.bias
            i = "qkv".index(which)
            n = w.shape[0] // 3
            return linear_rows(x, w, b, i * n, (i + 1) * n)
        if which == "q":
            return attn.to_q(x)
        w, b = attn.to_kv.weight, attn.to_kv.bias
        i = "kv".index(which)
        n = w.shape[0] // 2
        return linear_rows(x, w, b, i * n, (i + 1) * n)
    return {"q": attn.to_q, "k": attn.to_k, "v": attn.to_v}[which](x)


def added_kv(attn, x: torch.Tensor):
    if getattr(attn, "fused_projections", False):
        return attn.to_added_kv(x).chunk(2, dim=-1)
    return attn.add_k_proj(x), attn.add_v_proj(x)


def attend(attn, q, k, v):
    """Attention on (B, L, H, D) tensors through the processor's backend (diffusers' dispatcher)."""
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    out = dispatch_attention_fn(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False,
                                backend=attn.processor._attention_backend, parallel_config=None)
    return out.flatten(2, 3).type_as(q)


def block_supported(block) -> bool:
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    for attn in (block.attn1, block.attn2):
        proc = attn.processor
        if type(proc) is not WanAttnProcessor or getattr(proc, "_parallel_config", None) is not None:
            return False
    return True


def modulation(block, temb: torch.Tensor, n_tokens: int):
    """The six (shift, scale, gate, c_shift, c_scale, c_gate) terms and a slicer for token chunks."""
    if temb.ndim == 4:  # (B, L, 6, D): per-token modulation (Wan 2.2 TI2V)
        table = block.scale_shift_table.to(temb.device).unsqueeze(0)
        mods = [m.squeeze(2) for m in (table + temb.float()).chunk(6, dim=2)]
        return mods, (lambda m, s, e: m[:, s:e])
    mods = list((block.scale_shift_table.to(temb.device) + temb.float()).chunk(6, dim=1))
    return mods, (lambda m, s, e: m)


def cross_attention_kv(attn2, encoder_hidden_states: torch.Tensor, heads: int):
    """Cross-attention K/V of a Wan block (text, and image for I2V), computed once per block:
    (ck, cv, ck_img, cv_img), the image pair None for text-only models."""
    ctx = encoder_hidden_states
    ctx_img = None
    if attn2.add_k_proj is not None:
        split = ctx.shape[1] - 512  # the text context is 512 tokens, as in diffusers' processor
        ctx_img, ctx = ctx[:, :split], ctx[:, split:]
    ck = attn2.norm_k(project(attn2, ctx, "k")).unflatten(2, (heads, -1))
    cv = project(attn2, ctx, "v").unflatten(2, (heads, -1))
    ck_img = cv_img = None
    if ctx_img is not None:
        ck_img, cv_img = added_kv(attn2, ctx_img)
        ck_img = attn2.norm_added_k(ck_img).unflatten(2, (heads, -1))
        cv_img = cv_img.unflatten(2, (heads, -1))
    return ck, cv, ck_img, cv_img


def cross_attention_out(block, x: torch.Tensor, heads: int, ck, cv, ck_img=None, cv_img=None) -> torch.Tensor:
    """norm2 -> query projection -> attention to the text (and image) context -> output projection, for one
    chunk of tokens of a Wan block; the caller adds the result to its residual stream."""
    attn2 = block.attn2
    n = block.norm2(x.float()).type_as(x)
    q = attn2.norm_q(project(attn2, n, "q")).unflatten(2, (heads, -1))
    del n
    a = attend(attn2, q, ck, cv)
    if ck_img is not None:
        a = a + attend(attn2, q, ck_img, cv_img)
    del q
    return attn2.to_out[1](attn2.to_out[0](a))


def blocks_hooked(model) -> bool:
    for block in model.blocks:
        reg = getattr(block, "_diffusers_hook", None)
        if reg is not None and any(name not in TRANSPARENT_HOOKS for name in reg._hook_order):
            return True
        if hasattr(block, "_hf_hook"):
            return True
    return False


def output_head(model, tokens: torch.Tensor, temb: torch.Tensor, chunk: int, offset: int = 0) -> torch.Tensor:
    """norm_out -> modulate -> proj_out per token chunk into one buffer. `tokens` are positions
    offset..offset+L of the sequence (a sequence-parallel rank holds a slice); a per-token `temb`
    (Wan 2.2 TI2V, ndim 3) is cut to them."""
    n = tokens.shape[1]
    if temb.ndim == 3:
        shift, scale = (model.scale_shift_table.unsqueeze(0).to(temb.device) + temb.unsqueeze(2)).chunk(2, dim=2)
        shift, scale = shift.squeeze(2)[:, offset:offset + n], scale.squeeze(2)[:, offset:offset + n]
        at = lambda m, s, e: m[:, s:e]  # noqa: E731
    else:
        shift, scale = (model.scale_shift_table.to(temb.device) + temb.unsqueeze(1)).chunk(2, dim=1)
        at = lambda m, s, e: m  # noqa: E731
    shift = shift.to(tokens.device)
    scale = scale.to(tokens.device)
    projected = None
    for s, e in ranges(n, chunk):
        x = tokens[:, s:e]
        y = (model.norm_out(x.float()) * (1 + at(scale, s, e)) + at(shift, s, e)).type_as(x)
        y = model.proj_out(y)
        if projected is None:
            projected = y.new_empty((tokens.shape[0], n, y.shape[-1]))
        projected[:, s:e] = y
        del x, y
    return projected


def unpatchify(projected: torch.Tensor, grid: tuple[int, int, int, int], patch_size, return_dict: bool):
    """(B, tokens, p_t*p_h*p_w*C) -> the transformer's output (B, C, F, H, W), as WanTransformer3DModel returns it."""
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    batch_size, ppf, pph, ppw = grid
    p_t, p_h, p_w = patch_size
    out = projected.reshape(batch_size, ppf, pph, ppw, p_t, p_h, p_w, -1)
    out = out.permute(0, 7, 1, 4, 2, 5, 3, 6)
    output = out.flatten(6, 7).flatten(4, 5).flatten(2, 3)
    if not return_dict:
        return (output,)
    return Transformer2DModelOutput(sample=output)


def ffn_dim(block) -> int:
    widths = [m.out_features for m in block.ffn.modules() if isinstance(m, torch.nn.Linear)]
    return max(widths) if widths else 4 * block.norm1.normalized_shape[0]


def n_tokens(model, hidden_states) -> int:
    p_t, p_h, p_w = model.config.patch_size
    _, _, f, h, w = hidden_states.shape
    return (f // p_t) * (h // p_h) * (w // p_w)


def wan_conditioning(model, timestep, encoder_hidden_states, encoder_hidden_states_image):
    """WanTransformer3DModel.forward's conditioning prelude (timestep embedding, 6-way modulation, text and
    image context), shared by the sliced and the sequence-parallel forwards."""
    if timestep.ndim == 2:
        ts_seq_len = timestep.shape[1]
        timestep = timestep.flatten()
    else:
        ts_seq_len = None
    temb, timestep_proj, encoder_hidden_states, encoder_hidden_states_image = model.condition_embedder(
        timestep, encoder_hidden_states, encoder_hidden_states_image, timestep_seq_len=ts_seq_len)
    timestep_proj = timestep_proj.unflatten(2 if ts_seq_len is not None else 1, (6, -1))
    if encoder_hidden_states_image is not None:
        encoder_hidden_states = torch.concat([encoder_hidden_states_image, encoder_hidden_states], dim=1)
    return temb, timestep_proj, encoder_hidden_states
