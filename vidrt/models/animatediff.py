"""AnimateDiff: a Stable Diffusion 1.5 UNet with a MotionAdapter (diffusers AnimateDiffPipeline)."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from vidrt.models.specs import SPECS
from vidrt.models.base import ModelAdapter, ModuleRoles, RenderRequest, Stage
from vidrt.models.image_vae import decode_per_frame
from vidrt.models.layout import outermost
from vidrt.models.tokenizers import word_tokenizer


class AnimateDiffAdapter(ModelAdapter):
    spec = SPECS["animatediff"]
    denoiser_attr = "unet"
    frame_inputs = {"sample": "bcfhw", "encoder_hidden_states": "rows"}
    long_noise_reschedule = True
    frame_parallel = True
    stages = (
        Stage("text_encode", ("text_encoder",)),
        Stage("denoise", ("unet",)),
        Stage("vae_decode", ("vae",)),
    )

    def pipeline_class(self, with_image: bool):
        from diffusers import AnimateDiffPipeline

        return AnimateDiffPipeline

    def load_kwargs(self, path, dtype, allow_pickle, motion_adapter: str | None = None) -> dict[str, Any]:
        if motion_adapter is None:
            return {}
        from diffusers import MotionAdapter

        return {"motion_adapter": MotionAdapter.from_pretrained(
            str(motion_adapter), torch_dtype=dtype, use_safetensors=not allow_pickle or None)}

    def load(self, path, dtype=torch.float32, device="cpu", *, with_image=False, allow_pickle=False,
             motion_adapter: str | None = None, **kwargs):
        extra = self.load_kwargs(path, dtype, allow_pickle, motion_adapter)
        return super().load(path, dtype, device, with_image=with_image, allow_pickle=allow_pickle,
                            **extra, **kwargs)

    def tiny(self, seed: int = 0, **_: Any):
        from diffusers import (AnimateDiffPipeline, AutoencoderKL, DDIMScheduler, MotionAdapter,
                               UNet2DConditionModel)
        from transformers import CLIPTextConfig, CLIPTextModel

        torch.manual_seed(seed)
        tokenizer = word_tokenizer(style="clip", model_max_length=16)
        unet = UNet2DConditionModel(
            block_out_channels=(8, 16), layers_per_block=2, sample_size=8, in_channels=4, out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, norm_num_groups=2,
        )
        motion_adapter = MotionAdapter(block_out_channels=(8, 16), motion_layers_per_block=2,
                                       motion_norm_num_groups=2, motion_num_attention_heads=4)
        vae = AutoencoderKL(block_out_channels=[8, 16], in_channels=3, out_channels=3,
                            down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                            latent_channels=4, norm_num_groups=2)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37,
            layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=2, vocab_size=len(tokenizer),
            max_position_embeddings=tokenizer.model_max_length,
        ))
        scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear", clip_sample=False,
                                  timestep_spacing="linspace", steps_offset=1)
        pipe = AnimateDiffPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   motion_adapter=motion_adapter, scheduler=scheduler)
        return self.prepare(pipe)

    def roles(self, denoiser: nn.Module) -> ModuleRoles:
        from diffusers.models.attention_processor import Attention  # noqa: F401 (import check)
        from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
        from diffusers.models.transformers.transformer_2d import Transformer2DModel
        from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

        return ModuleRoles(
            spatial=outermost(denoiser, (ResnetBlock2D, Transformer2DModel, Downsample2D, Upsample2D)),
            temporal=outermost(denoiser, (AnimateDiffTransformer3D,)),
        )

    def encode_prompt(self, pipe, req: RenderRequest) -> dict[str, torch.Tensor]:
        cond, uncond = pipe.encode_prompt(req.prompt, pipe._execution_device, 1, req.guidance > 1.0,
                                          negative_prompt=req.negative_prompt)
        out = {"prompt_embeds": cond}
        if uncond is not None:
            out["negative_prompt_embeds"] = uncond
        return out

    def call_kwargs(self, pipe, req: RenderRequest) -> dict[str, Any]:
        return dict(num_frames=req.frames, height=req.height, width=req.width,
                    num_inference_steps=req.steps, guidance_scale=req.guidance)

    def decode_stream(self, pipe, latents: torch.Tensor, chunk_frames: int = 16) -> Iterator[torch.Tensor]:
        return decode_per_frame(pipe.vae, latents, chunk_frames)


ADAPTER = AnimateDiffAdapter()
