"""The render loop: config -> loaded pipeline -> stages (encode, denoise, decode) -> mp4 + sidecar.

Stages are run explicitly (text encoding before the pipeline call, VAE decoding after it) so that each
has its own time and peak memory, the text encoder can leave the accelerator before denoising, and the
decoder can be sliced independently of the pipeline's own choice.
"""
from __future__ import annotations

import inspect
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from vidrt.config import RenderConfig
from vidrt.errors import VidrtError
from vidrt.models import get_adapter
from vidrt.models.base import ModelAdapter, RenderRequest
from vidrt.video import check_writable, load_image, sidecar_path, to_uint8_frames, write_json, write_video

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class RenderResult:
    video_path: Path
    sidecar_path: Path
    frames: np.ndarray          # (F, H, W, 3) uint8, as written
    sidecar: dict[str, Any]


def resolve_device(devices: list[str]) -> torch.device:
    """The device a single-process run targets ('auto' = CUDA when present, else CPU)."""
    first = devices[0]
    if first == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(first)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise VidrtError(f"devices: {first} requested but no CUDA device is available")
    return device


def versions() -> dict[str, str]:
    import diffusers
    import transformers

    import vidrt

    return {"vidrt": vidrt.__version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}


def load_pipeline(cfg: RenderConfig, device: torch.device, with_image: bool):
    adapter = get_adapter(cfg.model.family)
    return adapter.load(cfg.model.path, DTYPES[cfg.model.dtype], device, with_image=with_image,
                        allow_pickle=cfg.model.allow_pickle,
                        **({"motion_adapter": cfg.model.motion_adapter} if cfg.model.motion_adapter else {}))


def request_from(cfg: RenderConfig, adapter: ModelAdapter, pipe, image) -> RenderRequest:
    frames = cfg.frames or adapter.native_frame_count(pipe)
    return RenderRequest(prompt=cfg.prompt, negative_prompt=cfg.negative_prompt, frames=frames,
                         height=cfg.height, width=cfg.width, steps=cfg.steps, guidance=cfg.guidance,
                         seed=cfg.seed, image=image, extra={"fps": cfg.output.fps})


def apply_memory(pipe, cfg: RenderConfig, device: torch.device) -> dict[str, Any]:
    try:
        from vidrt.slicing import apply_memory_config
    except ImportError:
        return {"applied": False, "reason": "memory engine not installed"}
    return apply_memory_config(pipe, cfg.memory.as_dict(), device)


def release_text_encoder(pipe, device: torch.device) -> None:
    try:
        from vidrt.offload import release_text_encoder as release
    except ImportError:
        return
    release(pipe, device)


def attach_policy(pipe, cfg: RenderConfig):
    policy_cfg = cfg.acceleration.as_dict()
    if policy_cfg.get("policy", "none") in ("none", [], ["none"]):
        return None
    from vidrt.policies import enable_policy, policy_from_config

    policy = policy_from_config(policy_cfg)
    if policy is not None:
        enable_policy(pipe, policy)
    return policy


def _tracker(device: torch.device):
    from vidrt.memory.tracker import MemoryTracker

    return MemoryTracker(device)


def run_stages(pipe, adapter: ModelAdapter, req: RenderRequest, device: torch.device, tracker,
               console: Console | None = None, show_progress: bool = True) -> np.ndarray:
    """Text encode -> (image encode) -> denoise -> VAE decode, each as a tracked stage; returns frames."""
    log = console or Console(stderr=True)
    denoiser = adapter.denoiser(pipe)

    with tracker.stage("text_encode", params=[pipe.text_encoder]):
        embeds = adapter.encode_prompt(pipe, req)
    _log_stage(log, tracker)
    release_text_encoder(pipe, device)

    hook = None
    if req.image is not None:
        image_modules = [m for m in (getattr(pipe, adapter.image_encoder_attr or "", None), pipe.vae) if m is not None]
        tracker.begin_stage("image_encode", params=image_modules)

        def enter_denoise(module, args, kwargs):
            nonlocal hook
            hook.remove()
            tracker.begin_stage("denoise", params=[denoiser])
            _log_stage(log, tracker)

        hook = denoiser.register_forward_pre_hook(enter_denoise, with_kwargs=True)
    else:
        tracker.begin_stage("denoise", params=[denoiser])

    progress = Progress(TextColumn("denoise"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=log, disable=not show_progress, transient=False)

    def on_step_end(_pipe, step, timestep, callback_kwargs):
        progress.update(task, completed=step + 1)
        return callback_kwargs

    kwargs = adapter.call_kwargs(pipe, req)
    step_hook = None
    if "callback_on_step_end" in inspect.signature(pipe.__call__).parameters:
        kwargs["callback_on_step_end"] = on_step_end
    else:  # I2VGen-XL has no step callback: count denoiser calls (one per step, CFG is batched there)
        step_hook = denoiser.register_forward_hook(lambda *_: progress.advance(task))
    try:
        with progress:
            task = progress.add_task("denoise", total=req.steps)
            result = pipe(**embeds, **kwargs, generator=adapter.generator(req, device), output_type="latent")
    finally:
        for h in (hook, step_hook):
            if h is not None:
                h.remove()
    tracker.end_stage()
    _log_stage(log, tracker)
    latents = result.frames

    with tracker.stage("vae_decode", params=[pipe.vae]):
        video = adapter.decode(pipe, latents)
        frames = to_uint8_frames(video)
        del video
    _log_stage(log, tracker)
    return frames


def _log_stage(log: Console, tracker, index: int = -1) -> None:
    if not tracker.stages:
        return
    s = tracker.stages[index]
    log.print(f"[bold]{s['name']:<12}[/] {s['seconds']:7.2f} s   peak {s['peak_bytes'] / 2**20:9.1f} MiB   "
              f"activations {s['activation_bytes'] / 2**20:9.1f} MiB")


def render(cfg: RenderConfig, out: str | Path | None = None, *, pipe=None, console: Console | None = None,
           show_progress: bool = True) -> RenderResult:
    """Render `cfg` to an mp4 and its JSON sidecar. Nothing is left behind on failure."""
    started = time.perf_counter()
    out_path = check_writable(out or cfg.output.path)
    adapter = get_adapter(cfg.model.family)
    image = load_image(cfg.image) if cfg.image else None
    device = resolve_device(cfg.devices)
    if pipe is None:
        pipe = load_pipeline(cfg, device, with_image=image is not None)
    req = request_from(cfg, adapter, pipe, image)
    if adapter.frame_rule == "4k+1" and (req.frames - 1) % 4:
        raise VidrtError(f"frames: {req.frames} is not 4k+1 (required by {adapter.family})")

    memory = apply_memory(pipe, cfg, device)
    attach_policy(pipe, cfg)
    tracker = _tracker(device)
    with tracker:
        frames = run_stages(pipe, adapter, req, device, tracker, console, show_progress)

    sidecar = {
        "output": str(out_path),
        "config": cfg.model_dump(mode="json"),
        "seed": cfg.seed,
        "frames": int(frames.shape[0]),
        "height": int(frames.shape[1]),
        "width": int(frames.shape[2]),
        "fps": cfg.output.fps,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "versions": versions(),
        "peak_memory_bytes": int(tracker.peak_bytes),
        "stages": tracker.stages,
        "memory": memory,
        "policy": _policy_stats(pipe),
        "seconds_total": round(time.perf_counter() - started, 3),
        "argv": sys.argv,
    }
    write_video(out_path, frames, cfg.output.fps, (frames.shape[1], frames.shape[2]))
    side = sidecar_path(out_path)
    try:
        write_json(side, sidecar)
    except BaseException:
        out_path.unlink(missing_ok=True)
        raise
    return RenderResult(out_path, side, frames, sidecar)


def _policy_stats(pipe) -> dict[str, Any] | None:
    try:
        from vidrt.policies import policy_stats
    except ImportError:
        return None
    return policy_stats(pipe)
