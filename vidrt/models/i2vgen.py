"""I2VGen-XL (diffusers I2VGenXLPipeline): image + text to video with a 3-D UNet.

Two known breakages are handled here: under transformers 5 its `encode_prompt` crashes unless
`clip_skip=None`, and it draws from the global RNG (VAE posterior sampling) so a `generator` alone
does not reproduce a video — the adapter seeds the global RNG too.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from vidrt.core.windows import DecodeWindows
from vidrt.models.specs import SPECS
from vidrt.models.base import ModelAdapter, ModuleRoles, RenderRequest, Stage
from vidrt.models.image_vae import decode_per_frame
from vidrt.models.layout import outermost
from vidrt.models.tokenizers import word_tokenizer
from vidrt.models.unet_sim import UNetSimulation


class I2VGenXLAdapter(UNetSimulation, ModelAdapter):
    spec = SPECS["i2vgen-xl"]
    denoiser_attr = "unet"
    image_encoder_attr = "image_encoder"
    frame_inputs = {"sample": "bcfhw", "image_latents": "bcfhw"}
    stages = (
        Stage("text_encode", ("text_encoder",)),
        Stage("image_encode", ("image_encoder", "vae")),
        Stage("denoise", ("unet",)),
        Stage("vae_decode", ("vae",)),
    )

    def pipeline_class(self, with_image: bool):
        from diffusers import I2VGenXLPipeline

        return I2VGenXLPipeline

    def tiny(self, seed: int = 0, **_: Any):
        from diffusers import AutoencoderKL, DDIMScheduler, I2VGenXLPipeline, I2VGenXLUNet
        from transformers import (CLIPImageProcessor, CLIPTextConfig, CLIPTextModel, CLIPVisionConfig,
                                  CLIPVisionModelWithProjection)

        torch.manual_seed(seed)
        tokenizer = word_tokenizer(style="clip", model_max_length=16)
        unet = I2VGenXLUNet(
            block_out_channels=(4, 8), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
            down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
            up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), cross_attention_dim=4, attention_head_dim=4,
            num_attention_heads=None, norm_num_groups=2,
        )
        vae = AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3,
                            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                            latent_channels=4, sample_size=32, norm_num_groups=2)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=4, intermediate_size=16,
            layer_norm_eps=1e-05, num_attention_heads=2, num_hidden_layers=2, vocab_size=len(tokenizer),
            max_position_embeddings=tokenizer.model_max_length, hidden_act="gelu", projection_dim=32,
        ))
        image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=4, projection_dim=4, num_hidden_layers=2, num_attention_heads=2, image_size=32,
            intermediate_size=16, patch_size=1))
        feature_extractor = CLIPImageProcessor(crop_size=32, size=32)
        scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear", clip_sample=False)
        pipe = I2VGenXLPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                image_encoder=image_encoder, feature_extractor=feature_extractor, unet=unet,
                                scheduler=scheduler)
        return self.prepare(pipe)

    def roles(self, denoiser: nn.Module) -> ModuleRoles:
        from diffusers.models.resnet import Downsample2D, ResnetBlock2D, TemporalConvLayer, Upsample2D
        from diffusers.models.transformers.transformer_2d import Transformer2DModel
        from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel

        return ModuleRoles(
            spatial=outermost(denoiser, (ResnetBlock2D, Transformer2DModel, Downsample2D, Upsample2D)),
            temporal=outermost(denoiser, (TemporalConvLayer, TransformerTemporalModel)),
        )

    def encode_prompt(self, pipe, req: RenderRequest, device=None) -> dict[str, torch.Tensor]:
        pipe._guidance_scale = req.guidance  # encode_prompt reads it to decide on classifier-free guidance
        cond, uncond = pipe.encode_prompt(req.prompt, device or pipe._execution_device, 1,
                                          negative_prompt=req.negative_prompt, clip_skip=None)
        out = {"prompt_embeds": cond}
        if uncond is not None and req.guidance > 1.0:
            out["negative_prompt_embeds"] = uncond
        return out

    def call_kwargs(self, pipe, req: RenderRequest) -> dict[str, Any]:
        # The global RNG is used for the VAE posterior sample of the conditioning image.
        torch.manual_seed(req.seed)
        return dict(image=req.image, num_frames=req.frames, height=req.height, width=req.width,
                    num_inference_steps=req.steps, guidance_scale=req.guidance, clip_skip=None,
                    target_fps=int(req.extra.get("fps", 16)))

    def pipeline_latents(self, step_latents: torch.Tensor, req: RenderRequest) -> torch.Tensor:
        """I2VGen-XL steps the scheduler on (B*F, C, h, w); its `latents=` argument is (B, C, F, h, w)."""
        if step_latents.ndim == 5:
            return step_latents
        bf, c, h, w = step_latents.shape
        return step_latents.reshape(bf // req.frames, req.frames, c, h, w).permute(0, 2, 1, 3, 4)

    def decode_stream(self, pipe, latents: torch.Tensor, windows: DecodeWindows | None = None,
                      chunk_frames: int = 16) -> Iterator[torch.Tensor]:
        return decode_per_frame(pipe.vae, latents, chunk_frames)   # frame by frame: no windows to re-anchor

    def simulate_image_inputs(self, tracker, mods, p, batch: int) -> dict[str, Any]:
        """I2VGenXLPipeline's image conditioning: CLIP image embeddings, and the VAE latent of the image
        followed by one mask frame per further frame."""
        enc, vae = mods["image_encoder"], mods["vae"]
        size = enc.config.image_size
        with tracker.stage("image_encode", params={"image_encoder": enc, "vae": vae}):
            pixels = torch.zeros(1, 3, size, size, dtype=p.dtype)
            emb = enc(pixels).image_embeds.unsqueeze(1)
            del pixels
            if p.cfg:
                emb = torch.cat([torch.zeros_like(emb), emb])
            image = torch.zeros(1, 3, p.height, p.width, dtype=p.dtype)
            lat = vae.encode(image).latent_dist.sample() * vae.config.scaling_factor
            del image
            lat = lat.unsqueeze(2)
            masks = [torch.ones_like(lat[:, :, :1]) * ((i + 1) / max(1, p.frames - 1)) for i in range(p.frames - 1)]
            if masks:
                lat = torch.cat([lat, torch.cat(masks, dim=2)], dim=2)
            del masks
            if p.cfg:
                lat = torch.cat([lat] * 2)
            extra = {"fps": torch.tensor([16] * batch), "image_latents": lat, "image_embeddings": emb}
            del lat, emb
        return extra


ADAPTER = I2VGenXLAdapter()
