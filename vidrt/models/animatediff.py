"""AnimateDiff: a Stable Diffusion 1.5 UNet with a MotionAdapter (diffusers AnimateDiffPipeline)."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from vidrt.core.errors import VidrtError
from vidrt.core.windows import DecodeWindows
from vidrt.models.specs import SPECS
from vidrt.models.base import ModelAdapter, ModuleRoles, RenderRequest, Stage
from vidrt.models.image_vae import decode_per_frame
from vidrt.models.known import KNOWN_MOTION_ADAPTERS, Component, known_dir, read_json
from vidrt.models.layout import outermost
from vidrt.models.loading import first_line, hub_failure, local_or_hub
from vidrt.models.tokenizers import word_tokenizer
from vidrt.models.unet_sim import UNetSimulation

DEFAULT_MOTION_ADAPTER = KNOWN_MOTION_ADAPTERS[0]


class AnimateDiffAdapter(UNetSimulation, ModelAdapter):
    spec = SPECS["animatediff"]
    denoiser_attr = "unet"
    frame_inputs = {"sample": "bcfhw", "encoder_hidden_states": "rows"}
    long_noise_reschedule = True
    frame_parallel = True
    stages = (
        Stage("text_encode", ("text_encoder",)),
        Stage("video_encode", ("vae",)),
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

        folder = local_or_hub(str(motion_adapter), "model.motion_adapter", index_file="config.json",
                              kind="MotionAdapter")
        try:
            adapter = MotionAdapter.from_pretrained(str(motion_adapter), torch_dtype=dtype,
                                                    use_safetensors=not allow_pickle or None)
        except Exception as exc:  # missing files, corrupt weights, an unreachable hub: one line, no traceback
            why = hub_failure(exc) if folder is None else f"{type(exc).__name__}: {first_line(exc)}"
            raise VidrtError(f"model.motion_adapter: cannot load a MotionAdapter from {motion_adapter}: {why}") \
                from None
        return {"motion_adapter": adapter}

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

    def encode_prompt(self, pipe, req: RenderRequest, device=None) -> dict[str, torch.Tensor]:
        cond, uncond = pipe.encode_prompt(req.prompt, device or pipe._execution_device, 1, req.guidance > 1.0,
                                          negative_prompt=req.negative_prompt)
        out = {"prompt_embeds": cond}
        if uncond is not None:
            out["negative_prompt_embeds"] = uncond
        return out

    def call_kwargs(self, pipe, req: RenderRequest) -> dict[str, Any]:
        if req.video is not None:      # the video-to-video pipeline takes the length from the latents
            return dict(height=req.height, width=req.width, num_inference_steps=req.steps,
                        guidance_scale=req.guidance, strength=req.strength)
        return dict(num_frames=req.frames, height=req.height, width=req.width,
                    num_inference_steps=req.steps, guidance_scale=req.guidance)

    def video_pipeline(self, pipe):
        from diffusers import AnimateDiffVideoToVideoPipeline

        return self.prepare(AnimateDiffVideoToVideoPipeline.from_pipe(pipe))

    def encode_video(self, pipe, req: RenderRequest, generator, device) -> torch.Tensor:
        """As AnimateDiffVideoToVideoPipeline encodes: 16 frames at a time (its decode_chunk_size, so the latent
        samples draw the same numbers from `generator`), in float32 when the VAE asks to be upcast, times the
        scaling factor; (1, F, C, h, w)."""
        from diffusers.pipelines.animatediff.pipeline_animatediff_video2video import retrieve_latents

        vae = pipe.vae
        dtype = pipe.text_encoder.dtype        # the pipeline's prompt_embeds dtype
        upcast = bool(vae.config.force_upcast) and vae.dtype != torch.float32
        if upcast:
            vae.to(torch.float32)
        try:
            chunks = self.video_chunks(pipe, req, device, dtype)
            latents = [retrieve_latents(vae.encode(c[0].transpose(0, 1).to(vae.dtype)), generator=generator)
                       for c in chunks]
        finally:
            if upcast:
                vae.to(dtype)
        return vae.config.scaling_factor * torch.cat(latents).to(dtype).unsqueeze(0)

    def noised_video_latents(self, pipe, clean, req, generator, device) -> torch.Tensor:
        """Noised in the encoder's (1, F, C, h, w) layout, as the pipeline draws its noise, then (1, C, F, h, w)."""
        return super().noised_video_latents(pipe, clean, req, generator, device).permute(0, 2, 1, 3, 4)

    def decode_stream(self, pipe, latents: torch.Tensor, windows: DecodeWindows | None = None,
                      chunk_frames: int = 16) -> Iterator[torch.Tensor]:
        return decode_per_frame(pipe.vae, latents, chunk_frames)   # frame by frame: no windows to re-anchor

    # ---- simulation: an SD1.5 folder's UNet2DConditionModel runs as a UNetMotionModel with the adapter ----
    def simulation_components(self, model_cfg, comps: dict[str, Component]) -> dict[str, Component]:
        if comps.get("unet") and comps["unet"].class_name == "UNet2DConditionModel":
            comps["motion_adapter"] = Component("diffusers", "MotionAdapter", _motion_adapter_config(
                getattr(model_cfg, "motion_adapter", None) or DEFAULT_MOTION_ADAPTER))
        return comps

    def build_simulated_denoiser(self, comps: dict[str, Component], build_module) -> nn.Module:
        from diffusers import UNet2DConditionModel, UNetMotionModel

        den = build_module(comps[self.denoiser_attr])
        if "motion_adapter" in comps and type(den) is UNet2DConditionModel:
            motion = build_module(comps["motion_adapter"])
            # a stand-in: from_unet2d only reads the adapter's config when it loads no weights (and its `.to`
            # cannot swap fake tensors)
            stand_in = SimpleNamespace(config=dict(motion.config), to=lambda *a, **k: None)
            den = UNetMotionModel.from_unet2d(den, stand_in, load_weights=False)
            del motion
        return den

    def simulated_prompt_embeds(self, prompt: torch.Tensor, frames: int) -> torch.Tensor:
        return prompt.repeat_interleave(repeats=frames, dim=0)   # AnimateDiffPipeline: one row per frame


def _motion_adapter_config(motion_adapter: str) -> dict:
    kd = known_dir(motion_adapter)
    path = kd if kd is not None else Path(motion_adapter)
    if not (path / "config.json").is_file():
        raise VidrtError(f"model.motion_adapter: unknown motion adapter {motion_adapter!r} for a dry run "
                         f"(known: {DEFAULT_MOTION_ADAPTER}, or a local folder with config.json)")
    return read_json(path / "config.json")


ADAPTER = AnimateDiffAdapter()
