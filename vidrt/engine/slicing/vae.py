"""VAE decode settings: frame slicing (exact) and spatial tiling (approximate, diffusers' blending).

- Image VAEs (AnimateDiff / I2VGen-XL decode frame images with `AutoencoderKL`): `vae.enable_slicing()`
  decodes one batch item at a time (exact); the adapters already decode a few frames per call.
- Wan's causal video VAE (`AutoencoderKLWan`) already decodes one latent frame at a time with a causal
  feature cache, but grows its output with `torch.cat` per latent frame, so at the end the whole video
  exists twice (old + new buffer). `decode_into_buffer` runs the same loop writing each latent frame's
  pixels into one preallocated output: bit-identical result, one full video less at the peak.
- Tiling (`vae.enable_tiling()`) splits H x W into overlapping tiles blended linearly: not exact, so
  "auto" turns it on only for frames of at least 720 x 1280 pixels; "on" always; "off" never.
  diffusers' `tiled_decode` keeps every tile of the whole video on the device until it blends them, so its
  peak grows with the video's length; `tiled_decode_via_host` decodes the same tiles one at a time and
  blends them in host memory (bit-identical), so the device holds one tile whatever the length.
"""
from __future__ import annotations

import contextlib
import contextvars
import types
from typing import Iterator

import torch

_ORIG = "_vidrt_orig_decode"
AUTO_TILING_PIXELS = 720 * 1280
_HOST = contextvars.ContextVar("vidrt_vae_host", default="cpu")


@contextlib.contextmanager
def decode_host(device):
    """Where `tiled_decode_via_host` keeps the decoded tiles. The simulator, whose fake CPU tensors stand for
    the accelerator, sets "meta" so that what a real run keeps on the host is not counted as device memory."""
    token = _HOST.set(str(device))
    try:
        yield
    finally:
        _HOST.reset(token)


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


def tiles_needed(vae, z: torch.Tensor) -> bool:
    """Whether diffusers' AutoencoderKLWan would decode `z` tiled (its own test, in latent pixels)."""
    ratio = vae.spatial_compression_ratio
    return bool(vae.use_tiling and (z.shape[-1] > vae.tile_sample_min_width // ratio
                                    or z.shape[-2] > vae.tile_sample_min_height // ratio))


def tiled_decode_via_host(vae, z: torch.Tensor, chunk_frames: int = 16) -> Iterator[torch.Tensor]:
    """AutoencoderKLWan.tiled_decode with the device holding one tile at a time.

    Each tile is decoded frame by frame through the causal cache exactly as diffusers does; its frames go to
    host memory as they come out and are blended there (diffusers' blend_v / blend_h, in place, in the same
    order and dtype) into one host output, yielded as (B, C, f, H, W) chunks of `chunk_frames` frames clamped
    to [-1, 1]. Only the strips a later tile blends with are kept (bottom rows of the row above, right columns
    of the tile to the left). Bit-identical to tiled_decode. Why: tiled_decode holds every tile of the whole
    video on the device until it blends them (H200, Wan 1.3B 480x832: 1.39 GiB at 81 frames, 4.78 GiB at 333,
    bench/results/gpu_long.md). The host then holds the decoded video once (fp32: 1.6 GB for 333 frames at
    480x832). Wan 2.1 layout only (no patch_size); the caller keeps diffusers' path otherwise.
    """
    if vae.config.patch_size is not None:
        raise ValueError("tiled_decode_via_host: VAEs with patch_size (Wan 2.2) are not supported")
    host = torch.device(_HOST.get())
    b, _, num_frames, height, width = z.shape
    ratio = vae.spatial_compression_ratio
    tile_h, tile_w = vae.tile_sample_min_height // ratio, vae.tile_sample_min_width // ratio
    step_h, step_w = vae.tile_sample_stride_height // ratio, vae.tile_sample_stride_width // ratio
    crop_h, crop_w = vae.tile_sample_stride_height, vae.tile_sample_stride_width
    blend_h = vae.tile_sample_min_height - crop_h
    blend_w = vae.tile_sample_min_width - crop_w
    out_h, out_w = height * ratio, width * ratio
    out = None
    above: dict[int, torch.Tensor] = {}
    try:
        for row, i in enumerate(range(0, height, step_h)):
            left = None
            below: dict[int, torch.Tensor] = {}
            for col, j in enumerate(range(0, width, step_w)):
                vae.clear_cache()
                frames = []
                for k in range(num_frames):
                    vae._conv_idx = [0]
                    piece = vae.post_quant_conv(z[:, :, k:k + 1, i:i + tile_h, j:j + tile_w])
                    piece = vae.decoder(piece, feat_cache=vae._feat_map, feat_idx=vae._conv_idx, first_chunk=k == 0)
                    frames.append(piece.to(host))
                    del piece
                tile = torch.cat(frames, dim=2)
                del frames
                if row > 0:
                    tile = vae.blend_v(above[col], tile, blend_h)
                if col > 0:
                    tile = vae.blend_h(left, tile, blend_w)
                below[col] = tile[:, :, :, tile.shape[-2] - min(blend_h, tile.shape[-2]):, :].clone()
                left = tile[:, :, :, :, tile.shape[-1] - min(blend_w, tile.shape[-1]):].clone()
                if out is None:
                    out = tile.new_empty((b, tile.shape[1], tile.shape[2], out_h, out_w))
                r0, c0 = row * crop_h, col * crop_w
                h = min(crop_h, tile.shape[-2], out_h - r0)
                w = min(crop_w, tile.shape[-1], out_w - c0)
                if h > 0 and w > 0:
                    out[:, :, :, r0:r0 + h, c0:c0 + w] = tile[:, :, :, :h, :w]
                del tile
            above = below
    finally:
        vae.clear_cache()
    for f0 in range(0, out.shape[2], chunk_frames):
        yield out[:, :, f0:f0 + chunk_frames].clamp(-1.0, 1.0)
