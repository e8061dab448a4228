"""The render loop: config -> loaded pipeline -> stages (encode, denoise, decode) -> mp4 + sidecar.

Stages are run explicitly (text encoding before the pipeline call, VAE decoding after it) so that each
has its own time and peak memory, the text encoder can leave the accelerator before denoising, and the
decoder can be sliced independently of the pipeline's own choice.
"""
from __future__ import annotations

import contextlib
import platform
import signal
import threading
import time
from dataclasses import dataclass
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from vidrt.run.checkpoint import Checkpoint, StepCheckpointer, restore_scheduler
from vidrt.config import RenderConfig
from vidrt.core.errors import VidrtError
from vidrt.models import get_adapter
from vidrt.models.base import ModelAdapter, RenderRequest
from vidrt.engine.oom import disable_oom_fallback, enable_oom_fallback
from vidrt.run.video import check_writable, load_image, sidecar_path, to_uint8_frames, write_json, write_video

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


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


def apply_memory(pipe, cfg: RenderConfig, req: RenderRequest, device: torch.device, log: Console,
                 gpus: int = 1) -> dict[str, Any]:
    """The config's memory settings, or — with `memory.budget` — the planner's fastest plan that fits
    (per GPU of `gpus` under torchrun, where it may shard the weights: offload "shard")."""
    from vidrt.engine.attention import apply_attention
    from vidrt.engine.slicing import apply_memory_config

    memory = cfg.memory.as_dict()
    planned = None
    if cfg.memory.budget is not None:
        from vidrt.memory.planner import plan

        chosen = plan(cfg, cfg.memory.budget, pipe=pipe, gpus=gpus)
        planned = chosen.to_dict()
        memory = {**chosen.memory_config()}
        memory.pop("text_encoder", None)  # the runner always releases the text encoder after encoding
        log.print(f"plan: {chosen}")
    applied = apply_memory_config(pipe, {**memory, "height": req.height, "width": req.width}, device)
    adapter = get_adapter(cfg.model.family)
    applied["attention"] = apply_attention(adapter.denoiser(pipe), cfg.memory.attention, device, adapter.attention_api)
    if planned is not None:
        applied["plan"] = {"peak_bytes": planned["peak_bytes"], "budget_bytes": planned["budget_bytes"],
                           "memory": planned["memory"]}
    return applied


def release_text_encoder(pipe, device: torch.device) -> None:
    from vidrt.engine.offload import release_text_encoder as release

    release(pipe, device)


def policy_requested(cfg: RenderConfig) -> bool:
    return cfg.acceleration.as_dict().get("policy", "none") not in ("none", [], ["none"])


def attach_policy(pipe, cfg: RenderConfig):
    if not policy_requested(cfg):
        return None
    policy_cfg = cfg.acceleration.as_dict()
    from vidrt.engine.policies import enable_policy, policy_from_config

    policy = policy_from_config(policy_cfg)
    if policy is not None:
        enable_policy(pipe, policy)
    return policy


def apply_long(pipe, adapter: ModelAdapter, cfg: RenderConfig, req: RenderRequest, resuming: bool,
               device: torch.device):
    """Context windows when the video is longer than the model's native length (or `long:` asks for them).
    Returns what was applied (for the sidecar) and an undo callable."""
    from vidrt.engine.long import disable_context_windows, enable_context_windows, loop_on_host, reschedule_noise, window_starts

    native = adapter.native_frame_count(pipe)
    if cfg.long is None and req.frames <= native:
        return None, lambda: None
    window_px = (cfg.long.window if cfg.long and cfg.long.window else None) or native
    window = adapter.latent_frames(window_px)
    overlap_px = cfg.long.overlap if cfg.long and cfg.long.overlap is not None else None
    overlap = (-(-overlap_px // adapter.temporal_compression) if overlap_px is not None else max(1, window // 4))
    total = adapter.latent_frames(req.frames)
    if overlap >= window:
        raise VidrtError(f"long.overlap: {overlap_px} frames is not shorter than the window ({window_px} frames)")
    if total <= window:
        return {"windows": 1, "window_frames": window_px}, lambda: None
    if policy_requested(cfg):
        raise VidrtError("acceleration.policy: step policies do not compose with context windows yet "
                         f"({req.frames} frames > window {window_px}); set acceleration.policy: none")
    denoiser = adapter.denoiser(pipe)
    # the loop's full-length tensors stay on the host (auto on accelerators; `long.loop_on_host: true` forces
    # it, also on the CPU where it changes nothing but the code path). Image-conditioned pipelines encode the
    # image inside the loop's device context, so they keep the loop where it is.
    wanted = cfg.long.loop_on_host if cfg.long is not None else None
    if wanted and req.image is not None:
        raise VidrtError("long.loop_on_host: image-conditioned runs keep the loop on the device; remove the key")
    on_host = bool(wanted) or (wanted is None and device.type != "cpu" and req.image is None)
    enable_context_windows(denoiser, adapter.frame_inputs, window, overlap, compute_device=device if on_host else None)
    undo = [lambda: disable_context_windows(denoiser)]
    if on_host:
        host_loop = contextlib.ExitStack()
        host_loop.enter_context(loop_on_host(pipe))
        undo.append(host_loop.close)
    if adapter.long_noise_reschedule and not resuming:
        original = pipe.prepare_latents
        shuffle = torch.Generator().manual_seed(req.seed + 1)

        def prepare_latents(*args, **kwargs):
            out = original(*args, **kwargs)
            if isinstance(out, tuple):
                return (reschedule_noise(out[0], window, overlap, shuffle), *out[1:])
            return reschedule_noise(out, window, overlap, shuffle)

        pipe.prepare_latents = prepare_latents
        undo.append(lambda: pipe.__dict__.pop("prepare_latents", None))
    applied = {"window_frames": window_px, "window_latent_frames": window, "overlap_latent_frames": overlap,
               "windows": len(window_starts(total, window, overlap)),
               "noise_rescheduled": adapter.long_noise_reschedule and not resuming, "loop_on_host": on_host}
    return applied, lambda: [u() for u in reversed(undo)]


def _tracker(device: torch.device):
    from vidrt.memory.tracker import MemoryTracker

    return MemoryTracker(device)


class RenderInterrupted(VidrtError):
    """Ctrl-C: the render stopped after a complete step whose checkpoint is on disk."""


@dataclass
class StepControl:
    """What happens around each scheduler step: progress, checkpoints, resume and interrupt."""

    total_steps: int
    checkpointer: StepCheckpointer | None = None
    resume: Checkpoint | None = None
    policy: Any = None
    on_step: Any = None            # callable(done, total) for progress
    interrupted: bool = False      # set by the SIGINT handler
    loop_device: torch.device | None = None  # where the pipeline's loop tensors live (None: the render device)

    @property
    def done_before(self) -> int:
        return self.resume.step if self.resume is not None else 0


@contextlib.contextmanager
def step_hooks(pipe, adapter: ModelAdapter, denoiser, req: RenderRequest, generator, control: StepControl,
               device: torch.device):
    """Wrap `scheduler.step` (called once per denoising step by every supported pipeline) to checkpoint and
    report progress, and `scheduler.set_timesteps` to resume mid-trajectory."""
    scheduler = pipe.scheduler
    done = control.done_before
    patched_before = {k: scheduler.__dict__[k] for k in ("step", "set_timesteps") if k in scheduler.__dict__}
    original_step = scheduler.step
    original_set = scheduler.set_timesteps
    handles = []

    def step(*args, **kwargs):
        nonlocal done
        out = original_step(*args, **kwargs)
        done += 1
        latents = out[0] if isinstance(out, tuple) else out.prev_sample
        if control.checkpointer is not None:
            control.checkpointer.save(done, control.total_steps, adapter.pipeline_latents(latents, req), scheduler,
                                      generator, policy_state(control.policy))
        if control.on_step is not None:
            control.on_step(done, control.total_steps)
        if control.interrupted and done < control.total_steps:
            raise RenderInterrupted(f"interrupted after step {done}/{control.total_steps}")
        return out

    scheduler.step = step
    if control.resume is not None:
        ckpt = control.resume

        def set_timesteps(*args, **kwargs):
            original_set(*args, **kwargs)
            restore_scheduler(scheduler, ckpt.scheduler, device)
            full = scheduler.timesteps
            scheduler.timesteps = full[ckpt.step:]  # the pipeline's loop starts at the next step ...

            def restore_full(*_):                   # ... while the scheduler itself sees the whole schedule
                scheduler.timesteps = full
                handle.remove()

            handle = denoiser.register_forward_pre_hook(restore_full)
            handles.append(handle)

        scheduler.set_timesteps = set_timesteps
        if generator is not None and ckpt.generator is not None:
            generator.set_state(ckpt.generator)
        set_policy_state(control.policy, ckpt.policy)
    try:
        yield
    finally:
        for name in ("step", "set_timesteps"):  # restore other wrappers (e.g. a step policy's) exactly
            if name in patched_before:
                scheduler.__dict__[name] = patched_before[name]
            else:
                scheduler.__dict__.pop(name, None)
        for handle in handles:
            handle.remove()


def policy_state(policy) -> Any:
    getter = getattr(policy, "state_dict", None)
    return getter() if callable(getter) else None


def set_policy_state(policy, state) -> None:
    setter = getattr(policy, "load_state_dict", None)
    if callable(setter) and state is not None:
        setter(state)


def encode_and_denoise(pipe, adapter: ModelAdapter, req: RenderRequest, device: torch.device, tracker,
                       log: Console, show_progress: bool = True,
                       control: StepControl | None = None) -> torch.Tensor:
    """Stages text_encode -> (image_encode) -> denoise; returns the final latents."""
    control = control or StepControl(total_steps=req.steps)
    denoiser = adapter.denoiser(pipe)

    with tracker.stage("text_encode", params=[pipe.text_encoder]):
        embeds = adapter.encode_prompt(pipe, req)
    _log_stage(log, tracker)
    release_text_encoder(pipe, device)

    if control.resume is not None and control.resume.step >= req.steps:
        log.print(f"resume: all {req.steps} steps were done; decoding the saved latents")
        return control.resume.latents.to(device)

    hook = None
    if req.image is not None:
        image_modules = [m for m in (getattr(pipe, adapter.image_encoder_attr or "", None), pipe.vae) if m is not None]
        tracker.begin_stage("image_encode", params=image_modules)

        def enter_denoise(module, args, kwargs):
            hook.remove()
            tracker.begin_stage("denoise", params=[denoiser])
            _log_stage(log, tracker)

        hook = denoiser.register_forward_pre_hook(enter_denoise, with_kwargs=True)
    else:
        tracker.begin_stage("denoise", params=[denoiser])

    progress = Progress(TextColumn("denoise"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=log, disable=not show_progress, transient=False)
    task = progress.add_task("denoise", total=req.steps, completed=control.done_before)
    control.on_step = lambda done, total: progress.update(task, completed=done)
    loop_device = control.loop_device or device
    generator = adapter.generator(req, loop_device)
    kwargs = adapter.call_kwargs(pipe, req)
    if control.resume is not None:
        # pipelines that scale given latents by init_noise_sigma (UNet families) would scale them twice
        kwargs["latents"] = control.resume.latents.to(loop_device) / getattr(pipe.scheduler, "init_noise_sigma", 1.0)
    try:
        with progress, step_hooks(pipe, adapter, denoiser, req, generator, control, device):
            result = pipe(**embeds, **kwargs, generator=generator, output_type="latent")
    finally:
        if hook is not None:
            hook.remove()
    tracker.end_stage()
    _log_stage(log, tracker)
    return result.frames


def decoded_frames(pipe, adapter: ModelAdapter, latents: torch.Tensor) -> Iterator[np.ndarray]:
    """uint8 (H, W, 3) frames, produced chunk by chunk from the adapter's streaming decoder."""
    for chunk in adapter.decode_stream(pipe, latents):
        yield from to_uint8_frames(chunk)


def run_stages(pipe, adapter: ModelAdapter, req: RenderRequest, device: torch.device, tracker,
               console: Console | None = None, show_progress: bool = True) -> np.ndarray:
    """All stages in memory (tests, library use); returns (F, H, W, 3) uint8 frames."""
    log = console or Console(stderr=True)
    latents = encode_and_denoise(pipe, adapter, req, device, tracker, log, show_progress)
    with tracker.stage("vae_decode", params=[pipe.vae]):
        frames = np.stack(list(decoded_frames(pipe, adapter, latents)))
    _log_stage(log, tracker)
    return frames


def _log_stage(log: Console, tracker, index: int = -1) -> None:
    if not tracker.stages:
        return
    s = tracker.stages[index]
    log.print(f"[bold]{s['name']:<12}[/] {s['seconds']:7.2f} s   peak {s['peak_bytes'] / 2**20:9.1f} MiB   "
              f"activations {s['activation_bytes'] / 2**20:9.1f} MiB")


def render(cfg: RenderConfig, out: str | Path | None = None, *, pipe=None, console: Console | None = None,
           show_progress: bool = True, resume: bool = False, checkpoints: bool = True) -> RenderResult:
    """Render `cfg` to an mp4 and its JSON sidecar, checkpointing every step beside the output.

    Nothing but the checkpoint folder is left behind on failure; `resume=True` continues from it.
    """
    started = time.perf_counter()
    log = console or Console(stderr=True)
    out_path = check_writable(out or cfg.output.path)
    adapter = get_adapter(cfg.model.family)
    image = load_image(cfg.image) if cfg.image else None
    device = resolve_device(cfg.devices)
    # --- vidrt.engine.distributed (issue 8): under torchrun, join the process group; each rank gets its own device
    from vidrt.engine import distributed as vdist
    dist_ctx = vdist.setup_from_env(device_type=device.type)
    if dist_ctx is not None:
        device = dist_ctx.device
        show_progress = show_progress and dist_ctx.is_main
    # --- end vidrt.engine.distributed
    config_dict = cfg.model_dump(mode="json")
    checkpointer = StepCheckpointer(out_path, config_dict) if checkpoints or resume else None
    resume_from = checkpointer.load() if resume else None
    if cfg.memory.offload == "shard" and dist_ctx is None:
        raise VidrtError("memory.offload: shard splits the weights over several ranks; run under torchrun "
                         "(--nproc-per-node N) or choose none, model or group")
    if pipe is None:
        pipe = load_pipeline(cfg, device, with_image=image is not None)
    req = request_from(cfg, adapter, pipe, image)
    if adapter.frame_rule == "4k+1" and (req.frames - 1) % 4:
        raise VidrtError(f"frames: {req.frames} is not 4k+1 (required by {adapter.family})")
    if resume_from is not None:
        log.print(f"resume: continuing after step {resume_from.step}/{req.steps} from {checkpointer.folder}")

    memory = apply_memory(pipe, cfg, req, device, log, gpus=dist_ctx.world if dist_ctx is not None else 1)
    oom = enable_oom_fallback(pipe, adapter.denoiser(pipe), lambda msg: log.print(f"[yellow]{msg}[/]"))
    # vidrt.engine.distributed (issue 8): CFG / sequence-parallel hooks, outside the OOM fallback (its retries stay rank-local)
    shard = (memory.get("offload") or {}).get("offload") == "shard"   # asked for, or chosen by the planner
    distributed = vdist.apply(pipe, adapter, dist_ctx, guidance=cfg.guidance, shard=shard)
    long_applied, undo_long = apply_long(pipe, adapter, cfg, req, resuming=resume_from is not None,
                                          device=device)
    policy = attach_policy(pipe, cfg)
    if resume_from is not None and policy is not None and not callable(getattr(policy, "state_dict", None)):
        log.print("[yellow]resume: the step policy keeps no checkpointable state; its histories restart at "
                  "the resume step, so frames may differ slightly from an uninterrupted run[/]")
    control = StepControl(total_steps=req.steps, checkpointer=checkpointer, resume=resume_from, policy=policy,
                          loop_device=torch.device("cpu") if (long_applied or {}).get("loop_on_host") else None)
    if dist_ctx is not None and not dist_ctx.is_main:  # vidrt.engine.distributed: only rank 0 writes checkpoints
        control.checkpointer = None
    tracker = _tracker(device)
    with tracker, interrupt_after_step(control), vdist.guard(dist_ctx, pipe, adapter):  # guard: vidrt.engine.distributed
        try:
            latents = encode_and_denoise(pipe, adapter, req, device, tracker, log, show_progress, control)
        except RenderInterrupted as exc:
            raise RenderInterrupted(f"{exc}; checkpoint in {checkpointer.folder}; continue with: vidrt render "
                                    f"CONFIG -o {out_path} --resume") from None
        finally:
            undo_long()
            disable_oom_fallback(adapter.denoiser(pipe))
        if dist_ctx is not None:  # vidrt.engine.distributed: every rank confirms the denoise; only rank 0 decodes/writes
            vdist.agree(True, "denoise")
            if not dist_ctx.is_main:
                return RenderResult(out_path, sidecar_path(out_path), 0, {
                    "rank": dist_ctx.rank, "distributed": distributed, "frames": 0, "height": req.height,
                    "width": req.width, "peak_memory_bytes": int(tracker.peak_bytes),
                    "seconds_total": round(time.perf_counter() - started, 3)})
        with tracker.stage("vae_decode", params=[pipe.vae]):
            latents = latents.to(device)   # (from the host when the loop ran there)
            count = write_video(out_path, decoded_frames(pipe, adapter, latents), cfg.output.fps,
                                (req.height, req.width))
        _log_stage(log, tracker)

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
        "stages": tracker.stages,
        "memory": memory,
        "oom_retries": oom.retries,
        "long": long_applied,
        "policy": _policy_stats(pipe),
        "distributed": distributed,  # vidrt.engine.distributed (issue 8): None for one process
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


@contextlib.contextmanager
def interrupt_after_step(control: StepControl):
    """First Ctrl-C: finish the current step, checkpoint, stop. A second Ctrl-C stops at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if control.interrupted:
            raise KeyboardInterrupt
        control.interrupted = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _policy_stats(pipe) -> dict[str, Any] | None:
    try:
        from vidrt.engine.policies import policy_stats
    except ImportError:
        return None
    return policy_stats(pipe)
