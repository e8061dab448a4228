"""Wan 2.1 (text-to-video via WanPipeline, image-to-video via WanImageToVideoPipeline)."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from vidrt.models.specs import SPECS
from vidrt.core.errors import VidrtError
from vidrt.core.windows import DecodeWindows
from vidrt.models.base import ModelAdapter, ModuleRoles, RenderRequest, Stage
from vidrt.models.layout import outermost
from vidrt.models.wan_vae import decode_stream, encode_stream, latent_stats
from vidrt.models.tokenizers import word_tokenizer
from vidrt.models import wan_sim


TINY_VARIANTS = ("2.1", "2.2-a14b", "2.2-ti2v")


class WanAdapter(ModelAdapter):
    spec = SPECS["wan"]
    denoiser_attr = "transformer"
    video_schedule_cut = True   # WanPipeline runs video-to-video (its expert switch included), see video_pipeline
    image_encoder_attr = "image_encoder"
    # Wan 2.2 TI2V (expand_timesteps) gives one timestep per token: (B, F*h*w), sliced with the frames
    frame_inputs = {"hidden_states": "bcfhw", "timestep": "tokens"}
    window_start_latents = 1    # latent frame 0 of a causal Wan VAE is the first video frame alone
    attention_api = "backend"
    patch_size = 2          # latent pixels per token on each side
    stages = (
        Stage("text_encode", ("text_encoder",)),
        Stage("image_encode", ("image_encoder", "vae")),
        Stage("video_encode", ("vae",)),
        Stage("denoise", ("transformer", "transformer_2"), alternate=("transformer", "transformer_2")),
        Stage("vae_decode", ("vae",)),
    )

    def pipeline_class(self, with_image: bool):
        from diffusers import WanImageToVideoPipeline, WanPipeline

        return WanImageToVideoPipeline if with_image else WanPipeline

    def tiny(self, seed: int = 0, *, with_image: bool = False, num_layers: int = 2, text_len: int = 16,
             variant: str = "2.1", **_: Any):
        """`variant`: "2.1"; "2.2-a14b" (two experts, `transformer_2` for the low-noise steps below the boundary,
        as Wan 2.2 A14B); "2.2-ti2v" (per-token timesteps, `expand_timesteps`, and the Wan 2.2 VAE: residual
        blocks, patch_size 2, 16x spatial compression, 48 latent channels, as Wan 2.2 TI2V-5B)."""
        from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
        from transformers import UMT5Config, UMT5EncoderModel

        if variant not in TINY_VARIANTS:
            raise ValueError(f"variant: one of {', '.join(TINY_VARIANTS)}, not {variant!r}")
        torch.manual_seed(seed)
        tokenizer = word_tokenizer(style="t5", model_max_length=text_len)
        text_encoder = UMT5EncoderModel(UMT5Config(
            vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, relative_attention_max_distance=16, pad_token_id=0,
            eos_token_id=1, decoder_start_token_id=0,
        ))
        ti2v = variant == "2.2-ti2v"
        if ti2v:
            vae = AutoencoderKLWan(base_dim=8, decoder_base_dim=8, z_dim=48, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                   temperal_downsample=[False, True, True], is_residual=True, in_channels=12,
                                   out_channels=12, patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4,
                                   latents_mean=[0.0] * 48, latents_std=[1.0] * 48)
        else:
            vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                   temperal_downsample=[False, True, True])
        channels = vae.config.z_dim
        config = dict(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
            in_channels=2 * channels + 4 if with_image and not ti2v else channels, out_channels=channels, text_dim=32,
            freq_dim=256, ffn_dim=32, num_layers=num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
            rope_max_seq_len=32, image_dim=4 if with_image and variant == "2.1" else None,
        )
        transformer = WanTransformer3DModel(**config)
        scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
        parts = dict(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                     transformer=transformer)
        if variant == "2.2-a14b":
            parts.update(transformer_2=WanTransformer3DModel(**config), boundary_ratio=0.9 if with_image else 0.875)
        elif ti2v:
            parts["expand_timesteps"] = True
        if with_image and variant == "2.1":
            from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

            parts["image_encoder"] = CLIPVisionModel(CLIPVisionConfig(
                hidden_size=4, projection_dim=4, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                intermediate_size=16, patch_size=1))
            parts["image_processor"] = CLIPImageProcessor(crop_size=32, size=32)
        return self.prepare(self.pipeline_class(with_image)(**parts))

    def roles(self, denoiser: nn.Module) -> ModuleRoles:
        from diffusers.models.transformers.transformer_wan import WanTransformerBlock

        return ModuleRoles(
            spatial=tuple(n for n in ("patch_embedding", "proj_out") if hasattr(denoiser, n)),
            token=outermost(denoiser, (WanTransformerBlock,)),
        )

    def max_sequence_length(self, pipe) -> int:
        return int(min(512, getattr(pipe.tokenizer, "model_max_length", 512) or 512))

    def encode_prompt(self, pipe, req: RenderRequest, device=None) -> dict[str, torch.Tensor]:
        cond, uncond = pipe.encode_prompt(
            prompt=req.prompt, negative_prompt=req.negative_prompt,
            do_classifier_free_guidance=req.guidance > 1.0, num_videos_per_prompt=1,
            max_sequence_length=self.max_sequence_length(pipe), device=device or pipe._execution_device,
            dtype=pipe.text_encoder.dtype,
        )
        out = {"prompt_embeds": cond}
        if uncond is not None:
            out["negative_prompt_embeds"] = uncond
        return out

    def call_kwargs(self, pipe, req: RenderRequest) -> dict[str, Any]:
        kwargs = dict(num_frames=req.frames, height=req.height, width=req.width,
                      num_inference_steps=req.steps, guidance_scale=req.guidance,
                      max_sequence_length=self.max_sequence_length(pipe))
        if req.image is not None:
            kwargs["image"] = req.image
        return kwargs   # video-to-video: the same call on the noised clip's latents, the schedule cut by the runner

    def video_pipeline(self, pipe):
        """WanPipeline itself (see `video_schedule_cut`): given the clip's noised latents and started at the
        strength's first step it runs what diffusers' WanVideoToVideoPipeline runs - which has no second expert
        (Wan 2.2 A14B) and takes the Wan 2.2 VAE's spatial factor for 8 - with the text-to-video pipeline's own
        expert switch at the boundary timestep (and `guidance_scale_2`)."""
        from diffusers import WanPipeline

        if not isinstance(pipe, WanPipeline):
            raise VidrtError(f"input_video: video-to-video needs a Wan text-to-video model, not a "
                             f"{type(pipe).__name__}")
        return pipe

    def encode_video(self, pipe, req: RenderRequest, generator, device) -> torch.Tensor:
        """As WanVideoToVideoPipeline encodes (the distribution's mode, normalised by the VAE's latent mean and
        std, float32), through the causal encoder a few frames at a time."""
        mode = encode_stream(pipe.vae, self.video_chunks(pipe, req, device, torch.float32)).float()
        mean, inv_std = latent_stats(pipe.vae.config, device, torch.float32)
        return (mode - mean) * inv_std

    def decode_stream(self, pipe, latents: torch.Tensor, windows: DecodeWindows | None = None) -> Iterator[torch.Tensor]:
        return decode_stream(pipe.vae, latents, windows)

    def denoiser_calls_per_step(self, cfg: bool) -> int:
        return 2 if cfg else 1    # WanPipeline calls the transformer once per CFG stream

    def slicing_axes(self, frames: int, height: int, width: int, batch: int) -> dict[str, int]:
        """The blocks' token sequence (latent frames x patches); CFG runs as two calls, so no batch."""
        s = self.latent_scale * self.patch_size
        return {"tokens": self.latent_frames(frames) * (height // s) * (width // s)}

    def simulate_stages(self, tracker, mods, params) -> None:
        wan_sim.simulate_stages(self, tracker, mods, params)


ADAPTER = WanAdapter()
