"""`render(cfg)`: config -> loaded pipeline -> the engine's features -> stages -> mp4 + sidecar.

The features are composed from the engine's verbs (memory settings, OOM fallback, distributed, long videos,
step policies) and removed again in reverse order; the stages are in stages.py, the per-step machinery in
steps.py.
"""
from __future__ import annotations

import platform
import shlex
import time
from importlib import metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from vidrt.config import RenderConfig, check_request, model_path_places
from vidrt.core.dtypes import torch_dtype
from vidrt.core.errors import VidrtError
from vidrt.core.video_input import VideoInput
from vidrt.engine import distributed as vdist
from vidrt.core.windows import DecodeWindows, render_decode_windows, window_plan
from vidrt.engine.long import LongVideoConfig, disable_long_video, enable_long_video
from vidrt.engine.oom import OomFallbackConfig, disable_oom_fallback, enable_oom_fallback
from vidrt.engine.policies import enable_policy, policy_from_config, policy_stats
from vidrt.memory.tracker import MemoryTracker
from vidrt.models import get_adapter
from vidrt.models.base import ModelAdapter, RenderRequest
from vidrt.models.loading import local_or_hub, process_peak_resident_bytes
from vidrt.run.checkpoint import StepCheckpointer
from vidrt.run.memory_setup import apply_memory
from vidrt.run.stages import decoded_frames, encode_and_denoise, log_stage
from vidrt.run.steps import RenderInterrupted, StepControl, interrupt_after_step
from vidrt.run.video import check_writable, load_image, sidecar_path, write_json, write_video


@dataclass
class RenderResult:
    video_path: Path
    sidecar_path: Path
    frames: int                 # number of frames written
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

    return {"vidrt": metadata.version("vidrt"), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}


def load_pipeline(cfg: RenderConfig, device: torch.device, with_image: bool):
    adapter = get_adapter(cfg.model.family)
    places = model_path_places(cfg)
    local_or_hub(cfg.model.path, "model.path", places)   # a missing folder: say where it was looked for
    try:
        return adapter.load(cfg.model.path, torch_dtype(cfg.model.dtype), device, with_image=with_image,
                            allow_pickle=cfg.model.allow_pickle, weights=cfg.model.weights,
                            weights_2=cfg.model.weights_2,
                            **({"motion_adapter": cfg.model.motion_adapter} if cfg.model.motion_adapter else {}))
    except VidrtError as exc:
        text = str(exc)
        if places and "Hugging Face hub" in text and not Path(cfg.model.path).exists():
            text = text.replace(f"{cfg.model.path} is not a local folder", f"{cfg.model.path} is not a folder{places}")
        raise VidrtError(text) from None


def resume_command(cfg: RenderConfig, out_path: Path) -> str:
    """The command that continues this render from its checkpoint, quoted for the shell: paste it as printed."""
    args = ["vidrt", "render", str(cfg.source) if cfg.source is not None else "CONFIG.yaml", "-o", str(out_path)]
    for assignment in cfg.overrides:
        args += ["--set", assignment]
    return shlex.join(args + ["--resume"])


def request_from(cfg: RenderConfig, adapter: ModelAdapter, pipe, image, video=None) -> RenderRequest:
    """What the pipeline call is asked; a video-to-video render is as long as its input (or `frames` of it)."""
    frames = adapter.spec.render_frames(cfg.frames, adapter.native_frame_count(pipe),
                                        video.count if video is not None else None)
    return RenderRequest(prompt=cfg.prompt, negative_prompt=cfg.negative_prompt, frames=frames,
                         height=cfg.height, width=cfg.width, steps=cfg.steps, guidance=cfg.guidance,
                         seed=cfg.seed, image=image, video=video, strength=cfg.strength if video else 1.0,
                         extra={"fps": cfg.output.fps})


def policy_requested(cfg: RenderConfig) -> bool:
    return cfg.acceleration.as_dict().get("policy", "none") not in ("none", [], ["none"])


def attach_policy(pipe, cfg: RenderConfig):
    if not policy_requested(cfg):
        return None
    policy = policy_from_config(cfg.acceleration.as_dict())
    if policy is not None:
        enable_policy(pipe, policy)
    return policy


def apply_long(pipe, adapter: ModelAdapter, cfg: RenderConfig, req: RenderRequest, resuming: bool,
               device: torch.device):
    """Context windows when the video is longer than the model's native length (or `long:` asks for them).
    Returns what was applied (for the sidecar) and an undo callable."""
    native = adapter.native_frame_count(pipe)
    if cfg.long is None and req.frames <= native:
        return None, lambda: None
    long = cfg.long
    windows = window_plan(adapter.spec, req.frames, native, long.window if long else None,
                          long.overlap if long else None)
    window_px = (long.window if long and long.window else None) or native
    if windows.total <= windows.window:
        return {"windows": 1, "window_frames": window_px}, lambda: None
    # the loop's full-length tensors stay on the host (auto on accelerators; `long.loop_on_host: true` forces
    # it, also on the CPU where it changes nothing but the code path). Image-conditioned pipelines encode the
    # image inside the loop's device context, so they keep the loop where it is.
    wanted = long.loop_on_host if long is not None else None
    if wanted and req.image is not None:
        raise VidrtError("long.loop_on_host: image-conditioned runs keep the loop on the device; remove the key")
    on_host = bool(wanted) or (wanted is None and device.type != "cpu" and req.image is None)
    # (noise rescheduling would shuffle a video-to-video render's input frames with its noise; a resumed render
    # continues from its saved latents)
    wanted_noise = long.noise_reschedule if long is not None else None
    reschedule = ((adapter.long_noise_reschedule if wanted_noise is None else wanted_noise)
                  and not resuming and req.video is None)
    enable_long_video(pipe, LongVideoConfig(windows.window, windows.overlap, loop_on_host=on_host,
                                            compute_device=str(device),
                                            noise_seed=(req.seed + 1) % 2 ** 64 if reschedule else None))
    applied = {"window_frames": window_px, "window_latent_frames": windows.window,
               "overlap_latent_frames": windows.overlap, "windows": windows.windows,
               "noise_rescheduled": reschedule, "loop_on_host": on_host}
    return applied, lambda: disable_long_video(pipe)


def decode_windows(pipe, adapter: ModelAdapter, cfg: RenderConfig, req: RenderRequest) -> DecodeWindows | None:
    """The re-anchored decode windows of this render (`long.decode_window`; auto: what the model declares), None
    when the video's latents fit one window."""
    return render_decode_windows(adapter.spec, cfg.long, adapter.declared_decode_window(pipe),
                                 adapter.latent_frames(req.frames))


def render(cfg: RenderConfig, out: str | Path | None = None, *, pipe=None, console: Console | None = None,
           show_progress: bool = True, resume: bool = False, checkpoints: bool = True) -> RenderResult:
    """Render `cfg` to an mp4 and its JSON sidecar, checkpointing every step beside the output.

    Everything the config alone decides is checked before the model loads (`check_request`, `check_writable`):
    nothing is written then. Later, nothing but the checkpoint folder is left behind on failure, and only when
    the render can continue from it: `resume=True` does. A checkpoint of an unfinished render is never replaced
    without `resume=True`.
    """
    started = time.perf_counter()
    log = console or Console(stderr=True)
    notes = check_request(cfg, model_files=pipe is None)
    video = VideoInput.open(cfg.input_video) if cfg.input_video else None
    if video is not None:
        if cfg.frames and cfg.frames > video.count:
            raise VidrtError(f"frames: {cfg.frames} asked, but input_video {video.path} has {video.count} frames; "
                             f"ask at most {get_adapter(cfg.model.family).spec.frames_at_most(video.count)} or leave frames out")
    out_path = check_writable(out or cfg.output.path, resume=resume, checkpoints=checkpoints or resume)
    adapter = get_adapter(cfg.model.family)
    image = load_image(cfg.image) if cfg.image else None
    device = resolve_device(cfg.devices)
    dist_ctx = vdist.setup_from_env(device_type=device.type)   # under torchrun: join the group, one device a rank
    if dist_ctx is not None:
        device = dist_ctx.device
        show_progress = show_progress and dist_ctx.is_main
    if dist_ctx is None or dist_ctx.is_main:
        for note in notes:
            log.print(f"[yellow]warning:[/] {note}", highlight=False, soft_wrap=True)
    config_dict = cfg.model_dump(mode="json")
    checkpointer = StepCheckpointer(out_path, config_dict) if checkpoints or resume else None
    resume_from = checkpointer.load() if resume else None
    if cfg.memory.offload == "shard" and dist_ctx is None:
        raise VidrtError("memory.offload: shard splits the weights over several ranks; run under torchrun "
                         "(--nproc-per-node N) or choose none, model or group")
    if pipe is None:
        pipe = load_pipeline(cfg, device, with_image=image is not None)
    if video is not None:
        pipe = adapter.video_pipeline(pipe)     # what runs video-to-video on the same components
    req = request_from(cfg, adapter, pipe, image, video)
    problem = adapter.spec.frames_error(req.frames)
    if problem:
        raise VidrtError(problem)
    if resume_from is not None:
        log.print(f"resume: continuing after step {resume_from.step}/{req.steps} from {checkpointer.folder}")

    memory, settings = apply_memory(pipe, cfg, device, log, req.height, req.width,
                                    gpus=dist_ctx.world if dist_ctx is not None else 1, output=out_path)
    oom = enable_oom_fallback(pipe, OomFallbackConfig(log=lambda msg: log.print(f"[yellow]{msg}[/]")))
    shard = (memory.get("offload") or {}).get("offload") == "shard"   # asked for, or chosen by the planner
    dist_state = vdist.enable_distributed(pipe, dist_ctx, vdist.DistributedConfig.from_env(guidance=cfg.guidance,
                                                                                          shard=shard))
    distributed = dist_state.described if dist_state is not None else None
    long_applied, undo_long = apply_long(pipe, adapter, cfg, req, resuming=resume_from is not None, device=device)
    windows = decode_windows(pipe, adapter, cfg, req)
    policy = attach_policy(pipe, cfg)
    if resume_from is not None and policy is not None and not callable(getattr(policy, "state_dict", None)):
        log.print("[yellow]resume: the step policy keeps no checkpointable state; its histories restart at "
                  "the resume step, so frames may differ slightly from an uninterrupted run[/]")
    control = StepControl(total_steps=req.denoise_steps, checkpointer=checkpointer, resume=resume_from, policy=policy,
                          loop_device=torch.device("cpu") if (long_applied or {}).get("loop_on_host") else None,
                          warn=lambda msg: log.print(f"[yellow]{msg}[/]", highlight=False))
    if dist_ctx is not None and not dist_ctx.is_main:  # only rank 0 writes checkpoints
        control.checkpointer = None
    tracker = MemoryTracker(device)
    try:
        with tracker, interrupt_after_step(control), vdist.guard(dist_ctx, pipe):
            try:
                latents = encode_and_denoise(pipe, adapter, req, device, tracker, log, show_progress, control,
                                         text_on_host=settings.text_encoder == "cpu" and device.type != "cpu")
            finally:
                undo_long()
                disable_oom_fallback(pipe)
            if not bool(torch.isfinite(latents).all()):
                if checkpointer is not None:
                    checkpointer.remove()   # resuming would decode the same overflowed latents
                raise VidrtError("denoise: the latents overflowed to NaN/inf, which decodes to a blank video "
                                 "(float16? try model.dtype: bfloat16 or float32, or a lower guidance); nothing "
                                 "written")
            if dist_ctx is not None:  # every rank confirms the denoise; only rank 0 decodes and writes
                vdist.agree(True, "denoise")
                if not dist_ctx.is_main:
                    return RenderResult(out_path, sidecar_path(out_path), 0, {
                        "rank": dist_ctx.rank, "distributed": distributed, "frames": 0, "height": req.height,
                        "width": req.width, "peak_memory_bytes": int(tracker.peak_bytes),
                        "seconds_total": round(time.perf_counter() - started, 3)})
            with tracker.stage("vae_decode", params=[pipe.vae]):
                latents = latents.to(device)   # (from the host when the loop ran there)
                count = write_video(out_path, decoded_frames(pipe, adapter, latents, windows), cfg.output.fps,
                                    (req.height, req.width))
            log_stage(log, tracker)
    except (VidrtError, KeyboardInterrupt) as exc:
        if checkpointer is None or not checkpointer.file.is_file() or control.checkpointer is None:
            raise
        how = f"checkpoint in {checkpointer.folder}; continue with: {resume_command(cfg, out_path)}"
        if isinstance(exc, KeyboardInterrupt):
            raise RenderInterrupted(f"interrupted during a step; {how}") from None
        try:
            again = type(exc)(f"{exc}; {how}")
        except TypeError:   # an error type with other arguments: its message is what matters
            again = VidrtError(f"{exc}; {how}")
        raise again from None

    sidecar = {
        "output": str(out_path),
        "config": config_dict,
        "seed": cfg.seed,
        "frames": count,
        "height": req.height,
        "width": req.width,
        "fps": cfg.output.fps,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "versions": versions(),
        "peak_memory_bytes": int(tracker.peak_bytes),
        "host_peak_bytes": process_peak_resident_bytes(),
        "stages": tracker.stages,
        "memory": memory,
        "oom_retries": oom.retries,
        "long": long_applied,
        "decode_windows": {"window_latent_frames": windows.window, "overlap_latent_frames": windows.overlap,
                           "windows": len(windows.starts(adapter.latent_frames(req.frames)))} if windows else None,
        "input_video": {"path": str(video.path), "frames_read": req.frames, "source_frames": video.count,
                        "source_size": [video.height, video.width], "strength": req.strength,
                        "denoise_steps": req.denoise_steps} if video is not None else None,
        "policy": policy_stats(pipe),
        "distributed": distributed,
        "resumed_from_step": resume_from.step if resume_from is not None else None,
        "seconds_total": round(time.perf_counter() - started, 3),
    }
    side = sidecar_path(out_path)
    try:
        write_json(side, sidecar)
    except BaseException:
        out_path.unlink(missing_ok=True)
        raise
    if checkpointer is not None:
        checkpointer.remove()
    return RenderResult(out_path, side, count, sidecar)
