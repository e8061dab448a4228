"""Wan's causal video VAE (`AutoencoderKLWan`) decoded without holding the video on the device.

- `decode_stream`: one latent frame at a time through the VAE's causal feature cache, each frame's pixels
  handed on as they come out (the VAE's own `_decode` runs the same loop but concatenates every output first).
- `decode_into_buffer`: diffusers' `_decode` with one preallocated output instead of a growing `torch.cat`
  (bit-identical; at the end the whole video would otherwise exist twice).
- `tiled_decode_via_host`: diffusers' `tiled_decode` with the device holding one tile at a time; the tiles are
  blended in host memory (bit-identical). diffusers' tiled decoder keeps every tile of the whole video on the
  device until it blends them, so its peak grows with the video's length (see bench/results/gpu_long.md).
"""
from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterable, Iterator

import torch

from vidrt.core.errors import VidrtError
from vidrt.core.windows import DecodeWindows, first_frame

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


def is_causal_video_vae(vae) -> bool:
    return hasattr(vae, "clear_cache") and hasattr(vae, "_feat_map") and hasattr(vae, "decoder")


def latent_stats(config, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The Wan VAE's per-channel latent mean and inverse std, shaped (1, z, 1, 1, 1), as diffusers' Wan pipelines
    build them (the inverse taken after the cast): latents = (mode - mean) * inv_std."""
    z = config.z_dim
    mean = torch.tensor(config.latents_mean).view(1, z, 1, 1, 1).to(device, dtype)
    inv_std = 1.0 / torch.tensor(config.latents_std).view(1, z, 1, 1, 1).to(device, dtype)
    return mean, inv_std


def encode_stream(vae, chunks: Iterable[torch.Tensor]) -> torch.Tensor:
    """The mode of the causal VAE's latent distribution for a video given as pixel chunks (1, C, f, H, W) in
    [-1, 1], in frame order: `AutoencoderKLWan._encode`'s loop (the first frame, then four at a time through the
    encoder's feature cache) fed as the chunks arrive, so only one chunk of pixels exists at a time. Frames
    beyond the last complete group of four are dropped, as `_encode` drops them. A VAE with a patch_size (Wan 2.2
    TI2V) patchifies each group as `_encode` patchifies the whole clip (space to channels, frame by frame)."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import patchify

    patch = getattr(vae.config, "patch_size", None)
    vae.clear_cache()
    z = vae.config.z_dim
    outs, pending = [], None
    try:
        for chunk in chunks:
            chunk = chunk.to(vae.dtype)
            pending = chunk if pending is None else torch.cat([pending, chunk], dim=2)
            while pending is not None and pending.shape[2] >= (1 if not outs else 4):
                n = 1 if not outs else 4
                group, pending = pending[:, :, :n], (pending[:, :, n:] if pending.shape[2] > n else None)
                if patch is not None:
                    group = patchify(group, patch_size=patch)
                vae._enc_conv_idx = [0]
                enc = vae.encoder(group, feat_cache=vae._enc_feat_map, feat_idx=vae._enc_conv_idx)
                outs.append(vae.quant_conv(enc)[:, :z])   # pointwise in time: per group = on the whole
    finally:
        vae.clear_cache()
    if not outs:
        raise VidrtError("input_video: no frames to encode")
    return torch.cat(outs, dim=2)


def decode_stream(vae, latents: torch.Tensor, windows: DecodeWindows | None = None) -> Iterator[torch.Tensor]:
    """Decode Wan latents one latent frame at a time through the causal VAE, yielding video chunks
    (B, C, f, H, W) in [-1, 1] as they are produced, so the whole video never sits in memory.

    The VAE's own `_decode` runs the same per-frame loop with its causal feature cache but
    concatenates every output before returning; this yields the identical pieces instead. With VAE
    tiling, diffusers' tiled decoder loops over tiles, not frames: `tiled_decode_via_host` runs the same
    tiles one at a time and blends them on the host (identical result), so the device holds one tile.
    With `windows` a sequence longer than one window is decoded in re-anchored windows (`_reanchored`).
    """
    latents = latents.to(vae.dtype)
    mean, inv_std = latent_stats(vae.config, latents.device, latents.dtype)
    latents = latents / inv_std + mean
    if windows is not None and latents.shape[2] > windows.window:
        yield from _reanchored(vae, latents, windows)
    else:
        yield from _decode_raw(vae, latents)


def _decode_raw(vae, latents: torch.Tensor) -> Iterator[torch.Tensor]:
    """`decode_stream` on latents already in the VAE's own scale (the decoder's input)."""
    if getattr(vae, "use_tiling", False) and tiles_needed(vae, latents):
        for chunk in tiled_decode_via_host(vae, latents):    # the device holds one tile, not the video
            yield chunk.float()
        return
    if getattr(vae, "use_tiling", False) or getattr(vae, "use_framewise_decoding", False):
        yield vae.decode(latents, return_dict=False)[0].float()
        return
    from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

    vae.clear_cache()
    try:
        x = vae.post_quant_conv(latents)
        for i in range(x.shape[2]):
            vae._conv_idx = [0]
            out = vae.decoder(x[:, :, i:i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx,
                              first_chunk=i == 0)
            if vae.config.patch_size is not None:
                out = unpatchify(out, patch_size=vae.config.patch_size)
            yield out.clamp(-1.0, 1.0).float()
    finally:
        vae.clear_cache()


def _reanchored(vae, z: torch.Tensor, windows: DecodeWindows) -> Iterator[torch.Tensor]:
    """Decode a long latent sequence in windows that each start the causal decoder afresh.

    Why: the decoder's feature caches carry a clip's start through the whole sequence, and a decoder trained on
    short clips drifts beyond them (the sample model's object changes colour; see bench/results/long_video.md).
    A window cannot simply restart at a later latent frame: the decoder treats its first latent frame as a lone
    video frame, which a later latent frame (four frames) is not. So each window after the first starts from an
    anchor: the last frame already decoded before it, encoded alone (a clip's first frame, as the VAE saw in
    training), then the window's own latent frames. It decodes `overlap` latent frames the window before it
    decoded too, and those 4 x overlap frames are cross-faded linearly from the earlier decode into the new
    one, so the restart shows no cut. Holds at most 4 x overlap + 1 decoded frames back; the rest streams.
    """
    tc = vae.config.scale_factor_temporal
    total = z.shape[2]
    held: list[torch.Tensor] = []              # decoded frames kept back, (B, C, 1, H, W) each, from `held_from`
    held_from = 0
    starts = windows.starts(total)
    for n, start in enumerate(starts):
        end = min(total, start + windows.window)
        if start == 0:
            frame, chunks = 0, _decode_raw(vae, z[:, :, :end])
        else:
            frame = held_from                  # the anchor, the first frame kept back
            anchor = held[0]
            yield anchor
            a = vae.encode(anchor.to(vae.dtype)).latent_dist.mode()
            chunks = _decode_raw(vae, torch.cat([a, z[:, :, start:end]], dim=2))
        fade_from, fade_to = (first_frame(start, tc), first_frame(start + windows.overlap, tc)) if start else (0, 0)
        # the next window's anchor and the frames it fades over stay back until it has decoded them too
        keep_from = first_frame(starts[n + 1], tc) - 1 if n + 1 < len(starts) else None
        kept = []
        for chunk in chunks:
            out = []
            for i in range(chunk.shape[2]):
                f, piece = frame, chunk[:, :, i:i + 1]
                frame += 1
                if f < fade_from:
                    continue                   # the anchor's own decode
                if f < fade_to:
                    w = (f - fade_from + 0.5) / (fade_to - fade_from)
                    piece = held[f - held_from] * (1 - w) + piece * w
                (kept if keep_from is not None and f >= keep_from else out).append(piece)
            if out:
                yield torch.cat(out, dim=2)
        held, held_from = kept, keep_from


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
    of the tile to the left). Bit-identical to tiled_decode. The host then holds the decoded video once.
    With a patch_size (the Wan 2.2 VAE) the decoder's output is patchified: tiles are cropped and blended in that
    space, as diffusers does, and each yielded chunk is unpatchified.
    """
    from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

    host = torch.device(_HOST.get())
    b, _, num_frames, height, width = z.shape
    patch = vae.config.patch_size or 1
    ratio = vae.spatial_compression_ratio
    tile_h, tile_w = vae.tile_sample_min_height // ratio, vae.tile_sample_min_width // ratio
    step_h, step_w = vae.tile_sample_stride_height // ratio, vae.tile_sample_stride_width // ratio
    crop_h, crop_w = vae.tile_sample_stride_height // patch, vae.tile_sample_stride_width // patch
    blend_h = vae.tile_sample_min_height // patch - crop_h
    blend_w = vae.tile_sample_min_width // patch - crop_w
    out_h, out_w = height * ratio // patch, width * ratio // patch
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
        yield unpatchify(out[:, :, f0:f0 + chunk_frames], patch_size=patch).clamp(-1.0, 1.0)
