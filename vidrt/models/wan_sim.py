"""Wan's simulated stages (vidrt.memory.simulate): what WanPipeline / WanImageToVideoPipeline do, on fake tensors.

Text encoding (twice with classifier-free guidance), for I2V the CLIP image encoder and the VAE encode of the
conditioning video, one flow-matching step (two transformer calls with CFG) and the VAE decode.
"""
from __future__ import annotations


import torch

from vidrt.models.simulation import encode_text, stage_variants, stream_decode
from vidrt.models.wan_vae import decode_host, encode_stream, latent_stats


def simulate_stages(adapter, tracker, mods, p) -> None:
    den, vae = mods["denoiser"], mods["vae"]
    cfg = vae.config
    embeds = encode_text(tracker, adapter, mods["text_encoder"], p)
    tscale = int(getattr(cfg, "scale_factor_temporal", 4) or 4)
    sf = int(getattr(cfg, "scale_factor_spatial", 8) or 8)
    tf = (p.frames - 1) // tscale + 1
    tf_call = (p.window_frames - 1) // tscale + 1          # one context window's latent frames
    tf_loop = ((p.loop_frames or p.frames) - 1) // tscale + 1
    h, w = p.height // sf, p.width // sf
    image_embeds = None
    condition = None
    if p.with_image:
        # Wan 2.1 I2V: CLIP image embeddings + the conditioning video (the image, then black frames) encoded and
        # concatenated to the latents with a mask; Wan 2.2 A14B I2V: the same without CLIP; Wan 2.2 TI2V: only
        # the image's own latent frame, which replaces the first latent frame (no extra channels)
        enc = mods.get("image_encoder")
        with tracker.stage("image_encode", params={"vae": vae, **({"image_encoder": enc} if enc else {})}):
            if enc is not None:
                size = enc.config.image_size
                pixels = torch.zeros(1, 3, size, size, dtype=p.dtype)
                image_embeds = enc(pixel_values=pixels, output_hidden_states=True).hidden_states[-2].to(p.dtype)
                del pixels
            concat = den.config.in_channels > den.config.out_channels
            image = torch.zeros(1, 3, 1, p.height, p.width, dtype=p.dtype)
            video = torch.cat([image, image.new_zeros(1, 3, p.frames - 1, p.height, p.width)], dim=2) \
                if concat else image
            del image
            lat = vae.encode(video).latent_dist.mode()
            del video
            if concat:
                mean, inv_std = latent_stats(cfg, None, torch.float32)
                lat = (lat.to(torch.float32) - mean) * inv_std
                mask = torch.ones(1, 4, tf, h, w)
                condition = torch.cat([mask, lat], dim=1)
                del mask
            del lat
    if p.video_input:        # as WanAdapter.encode_video: chunks of the clip through the causal encoder
        with tracker.stage("video_encode", params={"vae": vae}):
            step = adapter.video_chunk_frames
            chunks = (torch.zeros(1, 3, min(step, p.frames - i), p.height, p.width, dtype=p.dtype)
                      for i in range(0, p.frames, step))
            clean = encode_stream(vae, chunks).to(torch.float32)
            del clean
    latents = None
    for name, setup in stage_variants(p.denoise_variants, "denoise"):
        setup()
        latents = None
        with tracker.stage(name, params={adapter.denoiser_attr: den}):
            latents = torch.randn(1, den.config.out_channels, tf_call, h, w, dtype=torch.float32)
            # a long video's loop tensors on the accelerator (latents, the blended predictions)
            loop = torch.empty(3, den.config.out_channels, tf_loop, h, w) if tf_loop > tf_call else None
            if p.per_token_timesteps:   # (B, tokens): the transformer then modulates every token on its own
                pt, ph, pw = den.config.patch_size
                t = torch.full((1, tf_call // pt * (h // ph) * (w // pw)), 999.0)
            else:
                t = torch.full((1,), 999.0)
            model_in = latents
            if condition is not None:
                model_in = torch.cat([latents, condition[:, :, :tf_call]], dim=1)
            model_in = model_in.to(p.dtype)
            kw = {"encoder_hidden_states_image": image_embeds} if image_embeds is not None else {}
            if p.cfg and p.fast_cfg:
                # The uncond call runs while the cond prediction is alive and has the same activations:
                # one call with a prediction-sized tensor held gives the same peak at half the cost.
                held = torch.empty(latents.shape, dtype=p.dtype)
            pred = den(hidden_states=model_in, timestep=t, encoder_hidden_states=embeds[0], return_dict=False,
                       **kw)[0]
            if p.cfg and p.fast_cfg:
                pred = held + p.guidance * (pred - held)
                del held
            elif p.cfg:
                uncond = den(hidden_states=model_in, timestep=t, encoder_hidden_states=embeds[1],
                             return_dict=False, **kw)[0]
                pred = uncond + p.guidance * (pred - uncond)
                del uncond
            del model_in
            latents = latents + (-0.01) * pred.to(torch.float32)  # a flow-matching Euler step
            del pred, loop
    del embeds, condition, image_embeds
    if tf_call != tf:      # the decode gets the whole video's latents
        latents = torch.randn(1, den.config.out_channels, tf, h, w, dtype=torch.float32)
    latents = latents.to(p.dtype)
    for name, setup in stage_variants(p.decode_variants, "vae_decode"):
        setup()
        with decode_host("meta"):    # the tiled decode's host side is not accelerator memory
            if p.fast_cfg and getattr(vae, "use_tiling", False) and latents.shape[2] > 4:
                _extrapolated_decode(adapter, tracker, vae, latents, name)
                continue
            with tracker.stage(name, params={"vae": vae}):
                stream_decode(adapter, vae, latents)


def _extrapolated_decode(adapter, tracker, vae, latents, name) -> None:
    """Wan's tiled decode runs every tile frame by frame (minutes under fake tensors at 480p). Its working
    set per frame is constant after the first latent frame (which decodes to one video frame, the others to
    four) and what could grow is the decoded tile (its frames leave the device as they are decoded:
    wan_vae.tiled_decode_via_host), so decode 2 and 3 latent frames and extrapolate the stage's
    activation peak linearly in latent frames (planner only)."""
    acts = []
    seconds = 0.0
    for n in (2, 3):
        part = latents[:, :, :n].clone()
        with tracker.stage(f"{name}~{n}", params={"vae": vae}):
            stream_decode(adapter, vae, part)
        del part
        st = tracker.stages.pop()
        acts.append(st["activation_bytes"])
        seconds += st["seconds"]
        last = st
    n_full = latents.shape[2]
    act = acts[0] + (acts[1] - acts[0]) * (n_full - 2)
    inputs = last["input_bytes"] - latents[:, :, :3].numel() * latents.element_size() \
        + latents.numel() * latents.element_size()
    tracker.stages.append({"name": name, "seconds": seconds, "peak_bytes": int(last["peak_bytes"]),
                           "param_bytes": last["param_bytes"], "input_bytes": int(max(0, inputs)),
                           "activation_bytes": int(act), "extrapolated": True})
