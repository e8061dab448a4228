"""The UNet families' simulated stages (vidrt.memory.simulate): what AnimateDiffPipeline and I2VGenXLPipeline do,
on fake tensors.

Both encode the prompt with a CLIP text encoder (padded to its position embeddings), run one denoising step as
one UNet call on a batch of 2 with classifier-free guidance, and decode frame by frame. Where they differ the
script asks the adapter: `simulated_prompt_embeds` (AnimateDiff repeats the embeddings per frame) and
`simulate_image_inputs` (I2VGen-XL's image_encode stage and the extra UNet inputs it makes).
"""
from __future__ import annotations

from typing import Any

import torch

from vidrt.models.simulation import encode_text, stage_variants, stream_decode


class UNetSimulation:
    """Mixed into the UNet families' adapters (before ModelAdapter)."""

    def simulated_text_len(self, comps, mods, pipe=None) -> int:
        cfg = mods["text_encoder"].config
        if hasattr(cfg, "max_position_embeddings"):   # CLIP pads to its position embeddings
            return int(cfg.max_position_embeddings)
        return super().simulated_text_len(comps, mods, pipe)

    def simulated_text_states(self, te, ids, mask) -> torch.Tensor:
        return te(ids)[0]

    def simulated_prompt_embeds(self, prompt: torch.Tensor, frames: int) -> torch.Tensor:
        """The prompt embeddings as the UNet receives them (rows: CFG batch)."""
        return prompt

    def simulate_image_inputs(self, tracker, mods, p, batch: int) -> dict[str, Any]:
        """Run the family's image_encode stage, if any; the extra UNet inputs it makes."""
        return {}

    def simulate_stages(self, tracker, mods, p) -> None:
        simulate_stages(self, tracker, mods, p)


def simulate_stages(adapter, tracker, mods, p) -> None:
    den, vae = mods["denoiser"], mods["vae"]
    embeds = encode_text(tracker, adapter, mods["text_encoder"], p)
    prompt = torch.cat([embeds[1], embeds[0]]) if p.cfg else embeds[0]
    del embeds
    prompt = adapter.simulated_prompt_embeds(prompt, p.window_frames)
    sf = 2 ** (len(vae.config.block_out_channels) - 1)
    h, w = p.height // sf, p.width // sf
    batch = 2 if p.cfg else 1
    extra = adapter.simulate_image_inputs(tracker, mods, p, batch)
    if p.video_input:        # as AnimateDiffAdapter.encode_video: the clip through the image VAE in chunks
        with tracker.stage("video_encode", params={"vae": vae}):
            step = adapter.video_chunk_frames
            clean = torch.cat([vae.encode(torch.zeros(min(step, p.frames - i), 3, p.height, p.width,
                                                      dtype=p.dtype)).latent_dist.mode()
                               for i in range(0, p.frames, step)])
            del clean
    call_extra = {k: (v[:, :, :p.window_frames] if isinstance(v, torch.Tensor) and v.ndim == 5 else v)
                  for k, v in extra.items()}       # a context window's frames of the frame inputs
    latents = None
    for name, setup in stage_variants(p.denoise_variants, "denoise"):
        setup()
        latents = None
        with tracker.stage(name, params={adapter.denoiser_attr: den}):
            latents = torch.randn(1, den.config.in_channels, p.window_frames, h, w, dtype=p.dtype)
            loop_frames = p.loop_frames or p.frames
            # a long video's loop tensors on the accelerator (latents, the blended predictions)
            loop = torch.empty(3 * batch, den.config.in_channels, loop_frames, h, w, dtype=p.dtype) \
                if loop_frames > p.window_frames else None
            model_in = torch.cat([latents] * 2) if p.cfg else latents
            t = torch.tensor(999)
            pred = den(model_in, t, encoder_hidden_states=prompt, return_dict=False, **call_extra)[0]
            del model_in
            if p.cfg:
                uncond, cond = pred.chunk(2)
                pred = uncond + p.guidance * (cond - uncond)
                del uncond, cond
            latents = latents - 0.01 * pred  # a DDIM-like step
            del pred, loop
    del extra, call_extra, prompt
    if p.window_frames != p.frames:    # the decode gets the whole video's latents
        latents = torch.randn(1, den.config.in_channels, p.frames, h, w, dtype=p.dtype)
    for name, setup in stage_variants(p.decode_variants, "vae_decode"):
        setup()
        with tracker.stage(name, params={"vae": vae}):
            stream_decode(adapter, vae, latents)
