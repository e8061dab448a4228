"""Wan 2.1 (text-to-video via WanPipeline, image-to-video via WanImageToVideoPipeline)."""
from __future__ import annotations

import json
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from vidrt.models.base import ModelAdapter, ModuleRoles, RenderRequest, Stage
from vidrt.models.roles import outermost
from vidrt.models.tokenizers import word_tokenizer

SAMPLE_META = "vidrt.json"  # written beside a pipeline trained by vidrt (native frame count, size)


class WanAdapter(ModelAdapter):
    family = "wan"
    description = "Wan 2.1 DiT (T2V 1.3B/14B; I2V 14B when `image` is given). frames 4k+1, size multiple of 16"
    optional_image = True
    frame_rule = "4k+1"
    size_multiple = 16
    native_frames = 81
    denoiser_attr = "transformer"
    image_encoder_attr = "image_encoder"
    pipeline_class_names = ("WanPipeline", "WanImageToVideoPipeline")
    frame_inputs = {"hidden_states": "bcfhw"}
    attention_api = "backend"
    temporal_compression = 4
    stages = (
        Stage("text_encode", ("text_encoder",)),
        Stage("image_encode", ("image_encoder", "vae")),
        Stage("denoise", ("transformer", "transformer_2")),
        Stage("vae_decode", ("vae",)),
    )

    def pipeline_class(self, with_image: bool):
        from diffusers import WanImageToVideoPipeline, WanPipeline

        return WanImageToVideoPipeline if with_image else WanPipeline

    def native_frame_count(self, pipe=None) -> int:
        folder = getattr(getattr(pipe, "config", None), "_name_or_path", None) if pipe is not None else None
        if folder and (Path(folder) / SAMPLE_META).is_file():
            meta = json.loads((Path(folder) / SAMPLE_META).read_text())
            return int(meta.get("native_frames", self.native_frames))
        return self.native_frames

    def tiny(self, seed: int = 0, *, with_image: bool = False, num_layers: int = 2, text_len: int = 16, **_: Any):
        from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
        from transformers import UMT5Config, UMT5EncoderModel

        torch.manual_seed(seed)
        tokenizer = word_tokenizer(style="t5", model_max_length=text_len)
        text_encoder = UMT5EncoderModel(UMT5Config(
            vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, relative_attention_max_distance=16, pad_token_id=0,
            eos_token_id=1, decoder_start_token_id=0,
        ))
        vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                               temperal_downsample=[False, True, True])
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
            in_channels=36 if with_image else 16, out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32,
            num_layers=num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
            image_dim=4 if with_image else None,
        )
        scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
        parts = dict(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                     transformer=transformer)
        if with_image:
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

    def encode_prompt(self, pipe, req: RenderRequest) -> dict[str, torch.Tensor]:
        cond, uncond = pipe.encode_prompt(
            prompt=req.prompt, negative_prompt=req.negative_prompt,
            do_classifier_free_guidance=req.guidance > 1.0, num_videos_per_prompt=1,
            max_sequence_length=self.max_sequence_length(pipe), device=pipe._execution_device,
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
        return kwargs

    def decode_stream(self, pipe, latents: torch.Tensor, chunk_frames: int = 1) -> Iterator[torch.Tensor]:
        """Decode Wan latents one latent frame at a time through the causal VAE, yielding video chunks
        (B, C, f, H, W) in [-1, 1] as they are produced, so the whole video never sits in memory.

        The VAE's own `_decode` runs the same per-frame loop with its causal feature cache but
        concatenates every output before returning; this yields the identical pieces instead. With VAE
        tiling, diffusers' tiled decoder loops over tiles, not frames: `tiled_decode_via_host` runs the same
        tiles one at a time and blends them on the host (identical result), so the device holds one tile.
        """
        from vidrt.engine.slicing.vae import tiled_decode_via_host, tiles_needed

        vae = pipe.vae
        z = vae.config.z_dim
        latents = latents.to(vae.dtype)
        mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1).to(latents.device, latents.dtype)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1).to(latents.device, latents.dtype)
        latents = latents / inv_std + mean
        if getattr(vae, "use_tiling", False) and vae.config.patch_size is None and tiles_needed(vae, latents):
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
