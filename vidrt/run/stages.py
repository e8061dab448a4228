"""A render's stages on a loaded pipeline: text_encode -> (image_encode | video_encode) -> denoise -> vae_decode.

Stages are run explicitly (text encoding before the pipeline call, VAE decoding after it) so that each has its
own time and peak memory, the text encoder can leave the accelerator before denoising, and the decoder streams
its frames. For image-to-video families the span until the denoiser's first call is `image_encode`.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from vidrt.engine import attach
from vidrt.engine.offload import release_text_encoder
from vidrt.core.windows import DecodeWindows
from vidrt.models.base import ModelAdapter, RenderRequest
from vidrt.run.steps import FEATURE, CallOnce, StepControl, step_hooks
from vidrt.run.video import to_uint8_frames


def encode_and_denoise(pipe, adapter: ModelAdapter, req: RenderRequest, device: torch.device, tracker,
                       log: Console, show_progress: bool = True, control: StepControl | None = None,
                       text_on_host: bool = False) -> torch.Tensor:
    """Stages text_encode -> (image_encode | video_encode) -> denoise; returns the final latents. `text_on_host`: the text
    encoder runs on the CPU (its embeddings then go to the device)."""
    control = control or StepControl(total_steps=req.denoise_steps)
    denoiser = adapter.denoiser(pipe)

    with tracker.stage("text_encode", params=[] if text_on_host else [pipe.text_encoder]):
        embeds = adapter.encode_prompt(pipe, req, torch.device("cpu") if text_on_host else None)
        if text_on_host:
            embeds = {k: v.to(pipe._execution_device) for k, v in embeds.items()}
    log_stage(log, tracker)
    release_text_encoder(pipe, device)

    if control.resume is not None and control.resume.step >= req.steps:
        log.print(f"resume: all {req.steps} steps were done; decoding the saved latents")
        return control.resume.latents.to(device)

    loop_device = control.loop_device or device
    generator = adapter.generator(req, loop_device)
    kwargs = adapter.call_kwargs(pipe, req)
    if req.video is not None and control.resume is None:   # the input clip, encoded and noised to the first step
        with tracker.stage("video_encode", params=[pipe.vae]):
            kwargs["latents"] = adapter.video_latents(pipe, req, generator, loop_device)
        log_stage(log, tracker)

    if req.image is not None:
        image_modules = [m for m in (getattr(pipe, adapter.image_encoder_attr or "", None), pipe.vae) if m is not None]
        tracker.begin_stage("image_encode", params=image_modules)

        def enter_denoise():
            tracker.begin_stage("denoise", params=[denoiser])
            log_stage(log, tracker)

        attach.wrap_module(denoiser, CallOnce(enter_denoise), FEATURE, "stage")
    else:
        tracker.begin_stage("denoise", params=[denoiser])

    progress = Progress(TextColumn("denoise"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=log, disable=not show_progress, transient=False)
    task = progress.add_task("denoise", total=req.denoise_steps, completed=control.done_before)
    control.on_step = lambda done, total: progress.update(task, completed=done)
    if control.resume is not None:
        # text-to-video pipelines that scale given latents by init_noise_sigma (UNet families) would scale them
        # twice; video-to-video pipelines take given latents as they are (already noised). A resumed
        # video-to-video render neither encodes nor noises its clip again: the saved latents are the loop's.
        scale = 1.0 if req.video is not None else getattr(pipe.scheduler, "init_noise_sigma", 1.0)
        kwargs["latents"] = control.resume.latents.to(loop_device) / scale
    try:
        with progress, step_hooks(pipe, adapter, denoiser, req, generator, control, device):
            result = pipe(**embeds, **kwargs, generator=generator, output_type="latent")
    finally:
        attach.unwrap_module(denoiser, FEATURE, "stage")
    tracker.end_stage()
    log_stage(log, tracker)
    return result.frames


def decoded_frames(pipe, adapter: ModelAdapter, latents: torch.Tensor,
                   windows: DecodeWindows | None = None) -> Iterator[np.ndarray]:
    """uint8 (H, W, 3) frames, produced chunk by chunk from the adapter's streaming decoder (in re-anchored
    `windows` where given)."""
    for chunk in adapter.decode_stream(pipe, latents, windows):
        yield from to_uint8_frames(chunk)


def run_stages(pipe, adapter: ModelAdapter, req: RenderRequest, device: torch.device, tracker,
               console: Console | None = None, show_progress: bool = True, text_on_host: bool = False) -> np.ndarray:
    """All stages in memory (tests, library use); returns (F, H, W, 3) uint8 frames."""
    log = console or Console(stderr=True)
    latents = encode_and_denoise(pipe, adapter, req, device, tracker, log, show_progress, text_on_host=text_on_host)
    with tracker.stage("vae_decode", params=[pipe.vae]):
        frames = np.stack(list(decoded_frames(pipe, adapter, latents)))
    log_stage(log, tracker)
    return frames


def log_stage(log: Console, tracker, index: int = -1) -> None:
    if not tracker.stages:
        return
    s = tracker.stages[index]
    log.print(f"[bold]{s['name']:<12}[/] {s['seconds']:7.2f} s   peak {s['peak_bytes'] / 2**20:9.1f} MiB   "
              f"activations {s['activation_bytes'] / 2**20:9.1f} MiB")
