"""Long videos: overlapping context windows along time, blended every step.

    vidrt.enable_long_video(pipe, LongVideoConfig(window=21, overlap=5))    # latent frames
    vidrt.disable_long_video(pipe)

A denoiser evaluated on F latent frames costs activations proportional to F. Beyond the model's native length
the denoiser runs on overlapping windows of the native length whose outputs are blended with weights that sum
to 1 on every frame (linear ramps across each overlap), so activation memory stays that of one window however
long the video is. The window inputs are the frame slices of every argument the adapter declares as carrying a
frame axis (`adapter.frame_inputs`).

On an accelerator the *loop* can stay off it too (`loop_on_host`): the pipeline's latents, both CFG
predictions, the guided prediction and the scheduler's result are full-length tensors that outweigh one
window's activations at a few times the native length. With the loop on the host each window's inputs are
copied to `compute_device` and its blended output accumulated on the host.

FreeNoise-style noise rescheduling (`noise_seed`) permutes the first window's noise frames into the later
frames, so every window starts from noise with the same statistics and content as its neighbours.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vidrt.core.errors import VidrtError
from vidrt.core.windows import window_starts
from vidrt.engine import attach
from vidrt.engine.attach import ArgumentsHook
from vidrt.models import adapter_for, denoisers_of

BCFHW = "bcfhw"            # a (B, C, F, H, W) tensor: frames on dim 2
FRAMES_IN_BATCH = "rows"   # a (B*F, ...) tensor, rows ordered batch-major (b*F + f)
TOKENS = "tokens"          # a (B, F*T, ...) tensor of per-token values, frame-major (Wan 2.2's per-token timesteps)
FEATURE = "long"


@dataclass(frozen=True)
class LongVideoConfig:
    """Context windows over a long video, in latent frames.

    window: latent frames per denoiser call (the model's native length by default, see core.windows.window_plan);
    overlap: latent frames shared by neighbouring windows (< window);
    loop_on_host: keep the pipeline's loop tensors in host memory, run only each window on `compute_device`
        (a pipeline, not a bare denoiser; for text-to-video pipelines, whose loop device is free to choose);
    compute_device: where the windows run when the loop is on the host;
    noise_seed: when set, FreeNoise noise rescheduling of the initial latents with this seed (the renderer sets
        it where the family wants it, `adapter.long_noise_reschedule`, or the config's `long.noise_reschedule`).
    """

    window: int
    overlap: int
    loop_on_host: bool = False
    compute_device: str | None = None
    noise_seed: int | None = None

    def __post_init__(self):
        if not 0 <= self.overlap < self.window:
            raise VidrtError(f"long.overlap: {self.overlap} latent frames is not shorter than the window "
                             f"({self.window})")


@dataclass
class WindowState:
    """calls: denoiser evaluations on a window since the last reset."""

    calls: int = 0

    def reset(self) -> None:
        self.calls = 0


def window_weights(total: int, window: int, starts: list[int], start_latents: int = 0) -> torch.Tensor:
    """(n_windows, total) fp32 blending weights: each window ramps linearly over the frames it shares with a
    neighbour; columns sum to exactly 1 (normalised). `start_latents`: the first frames of every window after
    the first get no weight (a model that renders a window's start as a clip's start, `window_start_latents`;
    the window before covers them, as the overlap is at least as long)."""
    raw = torch.zeros(len(starts), total, dtype=torch.float64)
    ramp = torch.minimum(torch.arange(1, window + 1, dtype=torch.float64),
                         torch.arange(window, 0, -1, dtype=torch.float64))
    for i, start in enumerate(starts):
        w = ramp.clone()
        if i == 0:
            w[: window // 2] = w[window // 2]        # no neighbour on the left: full weight
        if i == len(starts) - 1:
            w[window // 2:] = w[window // 2]        # no neighbour on the right
        if i > 0:
            w[:start_latents] = 0
        raw[i, start:start + window] = w
    return (raw / raw.sum(0, keepdim=True)).float()


class ContextWindowHook(ArgumentsHook):
    """A diffusers hook (outermost on the denoiser): memory slicing and offload hooks installed below it keep
    working, and re-slicing (e.g. after an OOM) is picked up because the inner forward is looked up per call."""

    def __init__(self, frame_inputs: dict[str, str], window: int, overlap: int,
                 compute_device: torch.device | str | None = None, state: WindowState | None = None,
                 start_latents: int = 0):
        super().__init__()
        self.state = state or WindowState()
        self.frame_inputs = dict(frame_inputs)
        self.compute_device = torch.device(compute_device) if compute_device is not None else None
        self.main = next(iter(frame_inputs))
        self.window = window
        self.overlap = overlap
        self.start_latents = start_latents

    def new_forward(self, module, *args, **kwargs):
        inner = self.fn_ref.original_forward
        bound = self.arguments(module, args, kwargs)
        sample = bound[self.main]
        host = sample.device
        device = self.compute_device or host
        frames = sample.shape[2]
        if frames <= self.window:
            if device == host:
                return inner(*args, **kwargs)
            return _to_device(inner(**{n: _to_device(v, device) for n, v in bound.items()}), host)
        starts = window_starts(frames, self.window, self.overlap)
        weights = window_weights(frames, self.window, starts, self.start_latents).to(host)
        shared = {n: _to_device(v, device) for n, v in bound.items() if n not in self.frame_inputs}
        total = out = None
        for i, start in enumerate(starts):
            stop = start + self.window
            call = dict(shared)
            call.update({n: _to_device(slice_frames(bound[n], layout, frames, start, stop), device)
                         for n, layout in self.frame_inputs.items() if n in bound})
            out = inner(**call)
            piece = (out[0] if isinstance(out, tuple) else out.sample).to(host)
            if total is None:
                total = torch.zeros(*piece.shape[:2], frames, *piece.shape[3:], dtype=torch.float32, device=host)
            total[:, :, start:stop] += piece.float() * weights[i, start:stop].view(1, 1, -1, 1, 1)
            self.state.calls += 1
            del piece, call
        result = total if sample.dtype == torch.float32 else total.to(sample.dtype)
        if isinstance(out, tuple):
            return (result, *out[1:])
        return type(out)(sample=result)


def _to_device(value, device: torch.device):
    """A tensor (or a tuple/list or model output of them) on `device`; anything else unchanged."""
    if isinstance(value, torch.Tensor):
        return value if value.device == device else value.to(device, non_blocking=True)
    if isinstance(value, (tuple, list)):
        return type(value)(_to_device(v, device) for v in value)
    if hasattr(value, "to_tuple"):   # diffusers BaseOutput
        return type(value)(**{k: _to_device(v, device) for k, v in value.items()})
    return value


def slice_frames(value, layout: str, frames: int, start: int, stop: int):
    """Frames [start, stop) of an argument with the given frame layout (BCFHW, FRAMES_IN_BATCH or TOKENS); anything
    else (a per-sample timestep, a tensor of another length) unchanged."""
    if not isinstance(value, torch.Tensor):
        return value
    if layout == BCFHW and value.ndim == 5 and value.shape[2] == frames:
        return value[:, :, start:stop]
    if layout == TOKENS and value.ndim >= 2 and value.shape[1] % frames == 0:
        b, per = value.shape[0], value.shape[1] // frames
        return value.reshape(b, frames, per, *value.shape[2:])[:, start:stop].reshape(b, (stop - start) * per,
                                                                                    *value.shape[2:])
    if layout == FRAMES_IN_BATCH and value.shape[0] % frames == 0:
        b = value.shape[0] // frames
        return value.reshape(b, frames, *value.shape[1:])[:, start:stop].reshape(b * (stop - start), *value.shape[1:])
    return value


def enable_long_video(obj, config: LongVideoConfig) -> WindowState:
    """Run `obj`'s denoiser(s) on overlapping windows whenever the input is longer than `config.window`; on a
    pipeline also keep its loop on the host and reschedule its initial noise when the config asks."""
    state = WindowState()
    adapter = adapter_for(obj)
    is_pipeline = not isinstance(obj, nn.Module)
    if (config.loop_on_host or config.noise_seed is not None) and not is_pipeline:
        raise ValueError("loop_on_host and noise rescheduling need a pipeline, not a bare denoiser")
    compute = config.compute_device if config.loop_on_host else None
    start_latents = min(adapter.window_start_latents, config.overlap)   # (the window before must cover them)
    for den in denoisers_of(obj):
        attach.wrap_module(den, ContextWindowHook(adapter.frame_inputs, config.window, config.overlap, compute,
                                                  state, start_latents), FEATURE)
        attach.set_state(den, FEATURE, state)
    if config.loop_on_host:
        # diffusers pipelines put their loop tensors on `_execution_device`; only the denoiser runs elsewhere
        attach.override_attribute(obj, "_execution_device", property(lambda self: torch.device("cpu")), FEATURE)
    if config.noise_seed is not None:
        shuffle = torch.Generator().manual_seed(config.noise_seed)

        def prepare_latents(call, *args, **kwargs):
            out = call(*args, **kwargs)
            if isinstance(out, tuple):
                return (reschedule_noise(out[0], config.window, config.overlap, shuffle), *out[1:])
            return reschedule_noise(out, config.window, config.overlap, shuffle)

        attach.wrap_method(obj, "prepare_latents", prepare_latents, FEATURE)
    return state


def disable_long_video(obj) -> None:
    attach.detach(obj, FEATURE)


def window_state(obj) -> WindowState | None:
    dens = denoisers_of(obj)
    return attach.get_state(dens[0], FEATURE) if dens else None


def reschedule_noise(latents: torch.Tensor, window: int, overlap: int, generator: torch.Generator | None) -> torch.Tensor:
    """FreeNoise-style: frames after the first window reuse shuffled noise frames of the window before them,
    so every window starts from noise with the same statistics and content as its neighbours."""
    frames = latents.shape[2]
    if frames <= window:
        return latents
    out = latents.clone()
    stride = max(1, window - overlap)
    for start in range(window, frames, stride):
        source = torch.arange(start - window, start - window + stride)
        perm = source[torch.randperm(stride, generator=generator, device=generator.device if generator else "cpu").cpu()]
        n = min(stride, frames - start)
        out[:, :, start:start + n] = out[:, :, perm[:n]]
    return out
