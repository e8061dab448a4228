"""Feature slicer for Wan's DiT (diffusers `WanTransformer3DModel`).

Per block, two operator groups run over token chunks (docs/SLICING.md):
  A. norm1 -> modulate -> K/V projection -> norm_k -> rotary, written into full-length K and V buffers
     (the only full-length tensors a block adds besides the residual stream);
  B. per query chunk: norm1 -> modulate -> Q -> norm_q -> rotary -> attention over the full K/V -> out proj
     -> gate -> residual -> norm2 -> cross-attention (text/image K/V computed once per block) -> residual
     -> norm3 -> modulate -> FFN -> gate -> residual, written into the residual stream.
Queries see full K/V, every other op is per token: the result equals the unsliced block.

The model forward is replaced too: patch embedding runs per frame chunk into the token buffer, and
norm_out -> modulate -> proj_out per token chunk. The blocks are still called as modules, so hooks on
them (step policies, group offloading) keep working. When the block's input tensor was allocated by the
sliced model forward (and nothing else hooks the blocks), group B writes into it in place; otherwise a
fresh output buffer is used and the caller's tensor is left untouched.
"""
from __future__ import annotations

import contextvars
import math

import torch
import torch.nn.functional as F

from vidrt.engine.slicing.patching import call_original

_OWNED: contextvars.ContextVar = contextvars.ContextVar("vidrt_wan_owned", default=None)

# Hook names that only move weights; they never look at a block's tensors.
_HARMLESS_HOOKS = ("group_offloading", "layer_execution_tracker", "lazy_prefetch_group_offloading")


def _ranges(n: int, chunk: int):
    chunk = max(1, int(chunk))
    for s in range(0, n, chunk):
        yield s, min(n, s + chunk)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
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


def _rope_chunk(rotary_emb, s: int, e: int):
    if rotary_emb is None:
        return None
    if isinstance(rotary_emb, ChunkedRope):
        return rotary_emb.chunk(s, e)
    cos, sin = rotary_emb
    return cos[:, s:e], sin[:, s:e]


def _linear_rows(x: torch.Tensor, w: torch.Tensor, b, s: int, e: int) -> torch.Tensor:
    """Rows s:e of a fused projection. Its module's forward never runs, so a leaf-level offloading hook never
    onloads it: the rows are fetched to the input's device (a no-op when resident)."""
    return F.linear(x, w[s:e].to(x.device), None if b is None else b[s:e].to(x.device))


def _proj(attn, x: torch.Tensor, which: str) -> torch.Tensor:
    """One of q/k/v of a WanAttention, also when its projections are fused."""
    if getattr(attn, "fused_projections", False):
        if not attn.is_cross_attention:
            w, b = attn.to_qkv.weight, attn.to_qkv.bias
            i = "qkv".index(which)
            n = w.shape[0] // 3
            return _linear_rows(x, w, b, i * n, (i + 1) * n)
        if which == "q":
            return attn.to_q(x)
        w, b = attn.to_kv.weight, attn.to_kv.bias
        i = "kv".index(which)
        n = w.shape[0] // 2
        return _linear_rows(x, w, b, i * n, (i + 1) * n)
    return {"q": attn.to_q, "k": attn.to_k, "v": attn.to_v}[which](x)


def _added_kv(attn, x: torch.Tensor):
    if getattr(attn, "fused_projections", False):
        return attn.to_added_kv(x).chunk(2, dim=-1)
    return attn.add_k_proj(x), attn.add_v_proj(x)


def _attend(attn, q, k, v):
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


def _modulation(block, temb: torch.Tensor, n_tokens: int):
    """The six (shift, scale, gate, c_shift, c_scale, c_gate) terms and a slicer for token chunks."""
    if temb.ndim == 4:  # (B, L, 6, D): per-token modulation (Wan 2.2 TI2V)
        table = block.scale_shift_table.to(temb.device).unsqueeze(0)
        mods = [m.squeeze(2) for m in (table + temb.float()).chunk(6, dim=2)]
        return mods, (lambda m, s, e: m[:, s:e])
    mods = list((block.scale_shift_table.to(temb.device) + temb.float()).chunk(6, dim=1))
    return mods, (lambda m, s, e: m)


def make_block_forward(chunk_tokens: int):
    def forward(block, hidden_states, encoder_hidden_states, temb, rotary_emb, *args, **kwargs):
        if (args or kwargs or torch.is_grad_enabled() or not block_supported(block)):
            if isinstance(rotary_emb, ChunkedRope):
                rotary_emb = rotary_emb.full()
            return call_original(block, hidden_states, encoder_hidden_states, temb, rotary_emb, *args, **kwargs)
        chunk = chunk_tokens or auto_chunk_tokens(hidden_states.shape[1], hidden_states.shape[-1], _ffn_dim(block))
        return sliced_block(block, hidden_states, encoder_hidden_states, temb, rotary_emb, chunk)

    return forward


def cross_attention_kv(attn2, encoder_hidden_states: torch.Tensor, heads: int):
    """Cross-attention K/V of a Wan block (text, and image for I2V), computed once per block:
    (ck, cv, ck_img, cv_img), the image pair None for text-only models."""
    ctx = encoder_hidden_states
    ctx_img = None
    if attn2.add_k_proj is not None:
        split = ctx.shape[1] - 512  # the text context is 512 tokens, as in diffusers' processor
        ctx_img, ctx = ctx[:, :split], ctx[:, split:]
    ck = attn2.norm_k(_proj(attn2, ctx, "k")).unflatten(2, (heads, -1))
    cv = _proj(attn2, ctx, "v").unflatten(2, (heads, -1))
    ck_img = cv_img = None
    if ctx_img is not None:
        ck_img, cv_img = _added_kv(attn2, ctx_img)
        ck_img = attn2.norm_added_k(ck_img).unflatten(2, (heads, -1))
        cv_img = cv_img.unflatten(2, (heads, -1))
    return ck, cv, ck_img, cv_img


def cross_attention_out(block, x: torch.Tensor, heads: int, ck, cv, ck_img=None, cv_img=None) -> torch.Tensor:
    """norm2 -> query projection -> attention to the text (and image) context -> output projection, for one
    chunk of tokens of a Wan block; the caller adds the result to its residual stream."""
    attn2 = block.attn2
    n = block.norm2(x.float()).type_as(x)
    q = attn2.norm_q(_proj(attn2, n, "q")).unflatten(2, (heads, -1))
    del n
    a = _attend(attn2, q, ck, cv)
    if ck_img is not None:
        a = a + _attend(attn2, q, ck_img, cv_img)
    del q
    return attn2.to_out[1](attn2.to_out[0](a))


def sliced_block(block, hidden_states, encoder_hidden_states, temb, rotary_emb, chunk: int):
    B, L, _ = hidden_states.shape
    mods, at = _modulation(block, temb, L)
    shift_msa, scale_msa, gate_msa, c_shift, c_scale, c_gate = mods
    attn1, attn2 = block.attn1, block.attn2
    heads = attn1.heads

    # Group A: K and V of every token (self-attention needs them all), computed chunk by chunk.
    key = value = None
    for s, e in _ranges(L, chunk):
        x = hidden_states[:, s:e]
        n = (block.norm1(x.float()) * (1 + at(scale_msa, s, e)) + at(shift_msa, s, e)).type_as(x)
        k = attn1.norm_k(_proj(attn1, n, "k")).unflatten(2, (heads, -1))
        v = _proj(attn1, n, "v").unflatten(2, (heads, -1))
        del n
        rope = _rope_chunk(rotary_emb, s, e)
        if rope is not None:
            k = _rotate(k, *rope)
        if key is None:
            # (B, H, L, D) storage: the (B, L, H, D) view handed to attention permutes back to contiguous.
            key = k.new_empty((B, heads, L, k.shape[-1])).transpose(1, 2)
            value = v.new_empty((B, heads, L, v.shape[-1])).transpose(1, 2)
        key[:, s:e] = k
        value[:, s:e] = v
        del k, v

    # Cross-attention K/V (text, and image for I2V), once per block.
    ck, cv, ck_img, cv_img = cross_attention_kv(attn2, encoder_hidden_states, heads)

    owned = _OWNED.get()
    out = hidden_states if (owned is not None and owned == id(hidden_states)) else torch.empty_like(hidden_states)

    # Group B: everything else, per query chunk, into the residual stream.
    for s, e in _ranges(L, chunk):
        x = hidden_states[:, s:e]
        xf = x.float()
        n = (block.norm1(xf) * (1 + at(scale_msa, s, e)) + at(shift_msa, s, e)).type_as(x)
        q = attn1.norm_q(_proj(attn1, n, "q")).unflatten(2, (heads, -1))
        del n
        rope = _rope_chunk(rotary_emb, s, e)
        if rope is not None:
            q = _rotate(q, *rope)
        a = _attend(attn1, q, key, value)
        del q
        a = attn1.to_out[1](attn1.to_out[0](a))
        x = (xf + a * at(gate_msa, s, e)).type_as(x)
        del xf, a
        # cross-attention
        a = cross_attention_out(block, x, heads, ck, cv, ck_img, cv_img)
        x = x + a
        del a
        # feed-forward
        n = (block.norm3(x.float()) * (1 + at(c_scale, s, e)) + at(c_shift, s, e)).type_as(x)
        f = block.ffn(n)
        del n
        x = (x.float() + f.float() * at(c_gate, s, e)).type_as(x)
        del f
        out[:, s:e] = x
        del x
    return out


def _blocks_hooked(model) -> bool:
    for block in model.blocks:
        reg = getattr(block, "_diffusers_hook", None)
        if reg is not None and any(name not in _HARMLESS_HOOKS for name in reg._hook_order):
            return True
        if hasattr(block, "_hf_hook"):
            return True
    return False


def make_model_forward(chunk_tokens: int, chunk_frames: int | None):
    def forward(model, hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image=None,
                return_dict=True, attention_kwargs=None, *args, **kwargs):
        if args or kwargs or (torch.is_grad_enabled() and model.gradient_checkpointing) or \
                getattr(model, "_parallel_config", None) is not None:
            return call_original(model, hidden_states, timestep, encoder_hidden_states,
                                       encoder_hidden_states_image, return_dict, attention_kwargs, *args, **kwargs)
        chunk = chunk_tokens or auto_chunk_tokens(_n_tokens(model, hidden_states),
                                                  model.config.num_attention_heads * model.config.attention_head_dim,
                                                  model.config.ffn_dim)
        return sliced_model(model, hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image,
                            return_dict, chunk, chunk_frames)

    return forward


def sliced_model(model, hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image,
                 return_dict, chunk_tokens: int, chunk_frames: int | None):

    batch_size, _, num_frames, height, width = hidden_states.shape
    p_t, p_h, p_w = model.config.patch_size
    ppf, pph, ppw = num_frames // p_t, height // p_h, width // p_w
    per_frame = pph * ppw
    n_tokens = ppf * per_frame
    if chunk_frames is None:
        chunk_frames = max(1, chunk_tokens // max(1, per_frame))

    rotary_emb = ChunkedRope(model.rope, hidden_states, ppf, pph, ppw)

    # Patch embedding per frame chunk, straight into the token buffer.
    tokens = None
    for f0, f1 in _ranges(ppf, chunk_frames):
        x = model.patch_embedding(hidden_states[:, :, f0 * p_t:f1 * p_t])
        x = x.flatten(2).transpose(1, 2)
        if tokens is None:
            tokens = x.new_empty((batch_size, n_tokens, x.shape[-1]))
        tokens[:, f0 * per_frame:f1 * per_frame] = x
        del x

    temb, timestep_proj, encoder_hidden_states = wan_conditioning(
        model, timestep, encoder_hidden_states, encoder_hidden_states_image)

    inplace = not _blocks_hooked(model)
    for block in model.blocks:
        token = _OWNED.set(id(tokens) if inplace else None)
        try:
            out = block(tokens, encoder_hidden_states, timestep_proj, rotary_emb)
        finally:
            _OWNED.reset(token)
        inplace = inplace and out is tokens
        tokens = out

    projected = output_head(model, tokens, temb, chunk_tokens)
    del tokens
    return unpatchify(projected, (batch_size, ppf, pph, ppw), model.config.patch_size, return_dict)


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
    for s, e in _ranges(n, chunk):
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


def _ffn_dim(block) -> int:
    widths = [m.out_features for m in block.ffn.modules() if isinstance(m, torch.nn.Linear)]
    return max(widths) if widths else 4 * block.norm1.normalized_shape[0]


def _n_tokens(model, hidden_states) -> int:
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


def auto_chunk_tokens(n_tokens: int, dim: int, ffn_dim: int) -> int:
    """Token chunk for `chunk_tokens=None`: the per-chunk intermediates (~3 tensors of chunk x ffn_dim in
    the FFN, the largest) stay near 1/2 of one residual-stream tensor (n_tokens x dim), so a block's peak
    is ~3.5 residual streams (stream, K, V, chunk work) instead of ~15; a multiple of 256, at least 1024
    (smaller chunks mostly add per-chunk overhead)."""
    chunk = math.ceil(n_tokens * dim / (6 * ffn_dim) / 256) * 256
    return int(min(n_tokens, max(1024, chunk)))
