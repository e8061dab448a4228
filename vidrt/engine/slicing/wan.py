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

import torch

from vidrt.core.chunks import ranges
from vidrt.engine.attach import call_original
from vidrt.engine.kernels import gate_residual, norm_modulate
from vidrt.engine.slicing.auto import auto_chunk_tokens
from vidrt.engine.slicing.wan_ops import (ChunkedRope, attend, block_supported, blocks_hooked, cross_attention_kv,
                                          cross_attention_out, ffn_dim, modulation, n_tokens, output_head, project,
                                          rope_chunk, rotate, unpatchify, wan_conditioning)

_OWNED: contextvars.ContextVar = contextvars.ContextVar("vidrt_wan_owned", default=None)


def make_block_forward(config):
    def forward(block, hidden_states, encoder_hidden_states, temb, rotary_emb, *args, **kwargs):
        if (args or kwargs or torch.is_grad_enabled() or not block_supported(block)):
            if isinstance(rotary_emb, ChunkedRope):
                rotary_emb = rotary_emb.full()
            return call_original(block, hidden_states, encoder_hidden_states, temb, rotary_emb, *args, **kwargs)
        chunk = config.chunk_tokens or auto_chunk_tokens(hidden_states.shape[1], hidden_states.shape[-1],
                                                         ffn_dim(block), config.on_accelerator(hidden_states.device))
        return sliced_block(block, hidden_states, encoder_hidden_states, temb, rotary_emb, chunk, config.kernels)

    return forward


def _modulated(norm, x, shift, scale, kernels: str):
    """norm -> (1 + scale) -> + shift in fp32, x's dtype out: the block's own modules, or the fused kernel."""
    if kernels == "torch":
        return (norm(x.float()) * (1 + scale) + shift).type_as(x)
    return norm_modulate(x, shift, scale, eps=norm.eps, weight=norm.weight, bias=norm.bias, backend=kernels)


def _gated(x, f, gate, kernels: str, out=None):
    """x + f * gate in fp32, x's dtype out (into `out` when given)."""
    if kernels == "torch":
        y = (x.float() + f.float() * gate).type_as(x)
        if out is None:
            return y
        out.copy_(y)
        return out
    return gate_residual(x, f, gate, out=out, backend=kernels)


def sliced_block(block, hidden_states, encoder_hidden_states, temb, rotary_emb, chunk: int, kernels: str = "torch"):
    B, L, _ = hidden_states.shape
    mods, at = modulation(block, temb, L)
    shift_msa, scale_msa, gate_msa, c_shift, c_scale, c_gate = mods
    attn1, attn2 = block.attn1, block.attn2
    heads = attn1.heads

    # Group A: K and V of every token (self-attention needs them all), computed chunk by chunk.
    key = value = None
    for s, e in ranges(L, chunk):
        x = hidden_states[:, s:e]
        n = _modulated(block.norm1, x, at(shift_msa, s, e), at(scale_msa, s, e), kernels)
        k = attn1.norm_k(project(attn1, n, "k")).unflatten(2, (heads, -1))
        v = project(attn1, n, "v").unflatten(2, (heads, -1))
        del n
        rope = rope_chunk(rotary_emb, s, e)
        if rope is not None:
            k = rotate(k, *rope)
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
    for s, e in ranges(L, chunk):
        x = hidden_states[:, s:e]
        n = _modulated(block.norm1, x, at(shift_msa, s, e), at(scale_msa, s, e), kernels)
        q = attn1.norm_q(project(attn1, n, "q")).unflatten(2, (heads, -1))
        del n
        rope = rope_chunk(rotary_emb, s, e)
        if rope is not None:
            q = rotate(q, *rope)
        a = attend(attn1, q, key, value)
        del q
        a = attn1.to_out[1](attn1.to_out[0](a))
        x = _gated(x, a, at(gate_msa, s, e), kernels)
        del a
        # cross-attention
        a = cross_attention_out(block, x, heads, ck, cv, ck_img, cv_img)
        x = x + a
        del a
        # feed-forward
        n = _modulated(block.norm3, x, at(c_shift, s, e), at(c_scale, s, e), kernels)
        f = block.ffn(n)
        del n
        _gated(x, f, at(c_gate, s, e), kernels, out=out[:, s:e])
        del f, x
    return out


def make_model_forward(config):
    def forward(model, hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image=None,
                return_dict=True, attention_kwargs=None, *args, **kwargs):
        if args or kwargs or (torch.is_grad_enabled() and model.gradient_checkpointing) or \
                getattr(model, "_parallel_config", None) is not None:
            return call_original(model, hidden_states, timestep, encoder_hidden_states,
                                 encoder_hidden_states_image, return_dict, attention_kwargs, *args, **kwargs)
        chunk = config.chunk_tokens or auto_chunk_tokens(
            n_tokens(model, hidden_states), model.config.num_attention_heads * model.config.attention_head_dim,
            model.config.ffn_dim, config.on_accelerator(hidden_states.device))
        return sliced_model(model, hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image,
                            return_dict, chunk, config.chunk_frames)

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
    for f0, f1 in ranges(ppf, chunk_frames):
        x = model.patch_embedding(hidden_states[:, :, f0 * p_t:f1 * p_t])
        x = x.flatten(2).transpose(1, 2)
        if tokens is None:
            tokens = x.new_empty((batch_size, n_tokens, x.shape[-1]))
        tokens[:, f0 * per_frame:f1 * per_frame] = x
        del x

    temb, timestep_proj, encoder_hidden_states = wan_conditioning(
        model, timestep, encoder_hidden_states, encoder_hidden_states_image)

    inplace = not blocks_hooked(model)
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
