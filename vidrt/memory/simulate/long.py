"""Accelerator memory of a long render's denoising loop, simulated on a machine without one.

With context windows the denoiser's activations are those of one window, but the diffusers loop around it
also makes full-length tensors every step: the model input, the cond and uncond predictions, the guided
prediction and the scheduler's result. Whether they sit on the accelerator or on the host
(`vidrt.engine.long.loop_on_host`) decides whether accelerator memory is flat in the video length. A CPU run cannot
tell host from accelerator, so here the real pipeline (`WanPipeline.__call__`) runs under FakeTensorMode with
the transformer on the **meta** device as the stand-in accelerator and the host on (fake) CPU tensors, through
the real context-window hook and the real slicer, while the tracker's live-storage counter counts only storages
on the stand-in. Nothing is allocated.

Limits: Wan-style pipelines only (prompt embeddings go straight in; no text encoder or VAE is built); the
scheduler is FlowMatchEulerDiscreteScheduler with its sigmas kept as Python floats (multistep schedulers such as
UniPC keep 1-2 more full-length tensors of history, which `loop_on_host` also keeps on the host); SDPA on the
meta device takes the math path (an S x S score matrix per head), a small share at window sizes.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from vidrt.core.windows import window_plan, window_starts
from vidrt.engine.long import LongVideoConfig, enable_long_video
from vidrt.engine.slicing import enable_slicing
from vidrt.memory.counter import LiveCounter
from vidrt.models.loading import read_index
from vidrt.models.specs import family_of_class, get_spec

STAND_IN = "meta"   # the simulated accelerator's device type


def _scheduler(shift: float):
    from diffusers import FlowMatchEulerDiscreteScheduler
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    class SimulatedScheduler(FlowMatchEulerDiscreteScheduler):
        """Real schedule, computed outside fake mode; sigmas as floats (the loop reads them with float())."""

        def set_timesteps(self, *args, **kwargs):
            device = kwargs.get("device")
            kwargs["device"] = "cpu"
            with unset_fake_temporarily():
                super().set_timesteps(*args, **kwargs)
                self.sigmas = [float(s) for s in self.sigmas]
            self.timesteps = self.timesteps.to(device)
            self.set_begin_index(0)   # the step index by lookup would need a data-dependent nonzero()

    return SimulatedScheduler(shift=shift)


def wan_long_loop_peak(folder: str | Path, *, frames: int, height: int, width: int, loop_on_host: bool,
                       window_frames: int | None = None, overlap: int | None = None, steps: int = 2,
                       guidance: float = 5.0, slicing: bool = True, text_len: int = 16) -> dict[str, Any]:
    """Simulated accelerator peak of `steps` CFG steps of the Wan pipeline in `folder` (its transformer config)
    at `frames` x `height` x `width`, with context windows of `window_frames` video frames (default: the
    model's native length) and `overlap` latent frames (default: a quarter of the window, as `vidrt render`)."""
    from diffusers import WanPipeline, WanTransformer3DModel
    from torch._subclasses.fake_tensor import FakeTensorMode

    folder = Path(folder)
    spec = get_spec(family_of_class(read_index(folder).get("_class_name", "")) or "")
    config = {k: v for k, v in json.loads((folder / "transformer" / "config.json").read_text()).items()
              if not k.startswith("_")}
    plan = window_plan(spec, frames, spec.native_frame_count(folder), window_frames)
    window, total = plan.window, plan.total
    overlap = plan.overlap if overlap is None else overlap
    scheduler = _scheduler(3.0)      # (built outside fake mode: its constructor reads values)
    with torch.device("meta"):       # no init kernels: the weights' values do not matter
        den = WanTransformer3DModel(**config).eval()
    with FakeTensorMode(allow_non_fake_inputs=True), torch.no_grad():
        den = den.to_empty(device=STAND_IN)
        if slicing:
            enable_slicing(den)
        pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=den, scheduler=scheduler)
        pipe.set_progress_bar_config(disable=True)
        enable_long_video(pipe, LongVideoConfig(window, overlap, loop_on_host=loop_on_host, compute_device=STAND_IN))
        embeds = [torch.randn(1, text_len, config["text_dim"], device=STAND_IN) for _ in range(2)]
        with LiveCounter(device_type=STAND_IN) as counter:
            out = pipe(prompt_embeds=embeds[0], negative_prompt_embeds=embeds[1], num_frames=frames,
                       height=height, width=width, num_inference_steps=steps, guidance_scale=guidance,
                       output_type="latent", generator=torch.Generator().manual_seed(0)).frames
    return {"accelerator_peak_bytes": int(counter.peak_bytes), "latent_frames": total,
            "windows": plan.windows if overlap == plan.overlap else len(window_starts(total, window, overlap)),
            "loop_device": out.device.type}
