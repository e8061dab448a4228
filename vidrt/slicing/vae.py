"""VAE decode settings: frame slicing (exact) and spatial tiling (approximate, diffusers' blending).

- Image VAEs (AnimateDiff / I2VGen-XL decode frame images with `AutoencoderKL`): `vae.enable_slicing()`
  decodes one batch item at a time (exact); the adapters already decode a few frames per call.
- Wan's causal video VAE (`AutoencoderKLWan`) already decodes one latent frame at a time with a causal
  feature cache, but grows its output with `torch.cat` per latent frame, so at the end the whole video
  exists twice (old + new buffer). `decode_into_buffer` runs the same loop writing each latent frame's
  pixels into one preallocated output: bit-identical result, one full video less at the peak.
- Tiling (`vae.enable_tiling()`) splits H x W into overlapping tiles blended linearly: not exact, so
  "auto" turns it on only for frames of at least 720 x 1280 pixels; "on" always; "off" never.
"""
from __future__ import annotations

import types

import torch

_ORIG = "_vidrt_orig_decode"
AUTO_TILING_PIXELS = 720 * 1280


def _is_causal_video_vae(vae) -> bool:
    return hasattr(vae, "clear_cache") and hasattr(vae, "_feat_map") and hasattr(vae, "decoder")


def decode_into_buffer(vae, z: torch.Tensor, return_dict: bool = True):
    """AutoencoderKLWan._decode with a preallocated output instead of a growing torch.cat."""
    from diffusers.models.autoencoders.vae import DecoderOutput

    _, _, num_frame, height, width = z.shape
    tile_h = vae.tile_sample_min_height // vae.spatial_compression_ratio
    tile_w = vae.tile_sample_min_width // vae.spatial_compression_ratio
    if vae.use_tiling and (width > tile_w or height > tile_h):
        return vae.tiled_decode(z, return_dict=return_dict)

    vae.clear_cache()
    x = vae.post_quant_conv(z)
    out = first = None
    t = 0
    for i in range(num_frame):
        vae._conv_idx = [0]
        kwargs = {"first_chunk": True} if i == 0 else {}
        part = vae.decoder(x[:, :, i:i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx, **kwargs)
        if i == 0:
            first = part
            t = part.shape[2]
            continue
        if out is None:
            # the first latent frame yields 1 frame, every later one the same count (Wan: 4)
            total = first.shape[2] + (num_frame - 1) * part.shape[2]
            out = part.new_empty((part.shape[0], part.shape[1], total, *part.shape[3:]))
            out[:, :, :t] = first
            first = None
        out[:, :, t:t + part.shape[2]] = part
        t += part.shape[2]
        del part
    if out is None:
        out = first
    out = out[:, :, :t]
    if vae.config.patch_size is not None:
        from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

        out = unpatchify(out, patch_size=vae.config.patch_size)
    out = torch.clamp(out, min=-1.0, max=1.0)
    vae.clear_cache()
    if not return_dict:
        return (out,)
    return DecoderOutput(sample=out)


def apply_vae_settings(vae, mode: str = "auto", height: int | None = None, width: int | None = None) -> dict:
    """Apply `vae_tiling` = auto|on|off to a pipeline's VAE; returns what was set (JSON-able)."""
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"memory.vae_tiling: expected auto, on or off, got {mode!r}")
    info: dict = {"vae_tiling": False, "vae_slicing": False, "vae_frame_buffer": False}
    if vae is None:
        return info
    tile = mode == "on" or (mode == "auto" and height is not None and width is not None
                            and height * width >= AUTO_TILING_PIXELS)
    if tile and hasattr(vae, "enable_tiling"):
        vae.enable_tiling()
        info["vae_tiling"] = True
    elif hasattr(vae, "disable_tiling"):
        vae.disable_tiling()
    if hasattr(vae, "enable_slicing"):
        vae.enable_slicing()
        info["vae_slicing"] = True
    if _is_causal_video_vae(vae) and _ORIG not in vae.__dict__:
        object.__setattr__(vae, _ORIG, vae.__dict__.get("_decode"))
        vae._decode = types.MethodType(decode_into_buffer, vae)
        info["vae_frame_buffer"] = True
    elif _ORIG in vae.__dict__:
        info["vae_frame_buffer"] = True
    return info


def reset_vae(vae) -> None:
    """Undo apply_vae_settings: diffusers' own decode, no tiling, no slicing."""
    if vae is None:
        return
    if _ORIG in vae.__dict__:
        orig = vae.__dict__[_ORIG]
        if orig is None:
            del vae._decode
        else:
            vae._decode = orig
        object.__delattr__(vae, _ORIG)
    for name in ("disable_tiling", "disable_slicing"):
        if hasattr(vae, name):
            getattr(vae, name)()
