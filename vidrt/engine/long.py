"""Long videos: overlapping context windows along time, blended every step.

A denoiser evaluated on F latent frames costs activations proportional to F. Beyond the model's native
length the wrapper below runs the denoiser on overlapping windows of the native length and blends the
windows' outputs with weights that sum to 1 on every frame (linear ramps across each overlap), so activation
memory stays that of one window however long the video is. The window inputs are the frame slices of every
argument the adapter declares as carrying a frame axis (`adapter.frame_inputs`).

On an accelerator the windows can also keep the *loop* off it (`compute_device`): the pipeline's latents, both
CFG predictions, the guided prediction and the scheduler's result are full-length tensors, and at 8x the native
length six of them outweigh one window's activations (Wan 1.3B at 648 frames: 6 x 65 MB against ~0.33 GiB).
With the loop on the host, each window's inputs are copied to `compute_device` and its blended output is
accumulated on the host, so accelerator memory is that of one window whatever the length.

For the first window's noise to be reused by later windows (FreeNoise-style noise rescheduling, which keeps
windows consistent), `reschedule_noise` permutes the first window's noise frames into the later frames.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from vidrt.engine.attach import ArgumentsHook, get_hook, remove_hook, replace_hook

BCFHW = "bcfhw"            # a (B, C, F, H, W) tensor: frames on dim 2
FRAMES_IN_BATCH = "rows"   # a (B*F, ...) tensor, rows ordered batch-major (b*F + f)



def window_starts(total: int, window: int, overlap: int) -> list[int]:
    """Start indices of windows of length `window` covering [0, total) with at least `overlap` shared frames."""
    if total <= window:
        return [0]
    if not 0 <= overlap < window:
        raise ValueError(f"overlap {overlap} must be in [0, window={window})")
    stride = window - overlap
    starts = list(range(0, total - window + 1, stride))
    if starts[-1] + window < total:
        starts.append(total - window)
    return starts


def window_weights(total: int, window: int, starts: list[int]) -> torch.Tensor:
    """(n_windows, total) fp32 blending weights: each window ramps linearly over the frames it shares with a
    neighbour; columns sum to exactly 1 (normalised)."""
    raw = torch.zeros(len(starts), total, dtype=torch.float64)
    ramp = torch.minimum(torch.arange(1, window + 1, dtype=torch.float64),
                         torch.arange(window, 0, -1, dtype=torch.float64))
    for i, start in enumerate(starts):
        w = ramp.clone()
        if i == 0:
            w[: window // 2] = w[window // 2]        # no neighbour on the left: full weight
        if i == len(starts) - 1:
            w[window // 2:] = w[window // 2]        # no neighbour on the right
        raw[i, start:start + window] = w
    return (raw / raw.sum(0, keepdim=True)).float()


HOOK_NAME = "vidrt_context_windows"


class ContextWindowHook(ArgumentsHook):
    """A diffusers hook (outermost on the denoiser): memory slicing and offload hooks installed below it keep
    working, and re-slicing (e.g. after an OOM) is picked up because the inner forward is looked up per call."""

    def __init__(self, frame_inputs: dict[str, str], window: int, overlap: int,
                 compute_device: torch.device | str | None = None):
        super().__init__()
        self.frame_inputs = dict(frame_inputs)
        self.compute_device = torch.device(compute_device) if compute_device is not None else None
        self.main = next(iter(frame_inputs))
        self.window = window
        self.overlap = overlap
        self.calls = 0  # denoiser evaluations on a window (for tests and stats)

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
        weights = window_weights(frames, self.window, starts).to(host)
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
            self.calls += 1
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
    """Frames [start, stop) of an argument with the given frame layout (BCFHW or FRAMES_IN_BATCH); anything else
    unchanged."""
    if not isinstance(value, torch.Tensor):
        return value
    if layout == BCFHW and value.ndim == 5 and value.shape[2] == frames:
        return value[:, :, start:stop]
    if layout == FRAMES_IN_BATCH and value.shape[0] % frames == 0:
        b = value.shape[0] // frames
        return value.reshape(b, frames, *value.shape[1:])[:, start:stop].reshape(b * (stop - start), *value.shape[1:])
    return value


def enable_context_windows(denoiser: nn.Module, frame_inputs: dict[str, str], window: int, overlap: int,
                           compute_device: torch.device | str | None = None) -> None:
    """Run `denoiser` on overlapping windows of `window` latent frames whenever its input is longer.

    `frame_inputs` maps forward-argument names to their frame layout; the first one names the main input.
    `compute_device`: where the windows run when the caller's tensors live elsewhere (the loop on the host).
    """
    replace_hook(denoiser, ContextWindowHook(frame_inputs, window, overlap, compute_device), HOOK_NAME)


@contextlib.contextmanager
def loop_on_host(pipe):
    """The pipeline's own loop (latents, CFG, scheduler step) runs on the CPU for the duration: diffusers
    pipelines put their loop tensors on `_execution_device`, overridden here by a class swap that is undone
    on exit. Only the denoiser must run elsewhere (its context-window hook moves each window there)."""
    cls = type(pipe)
    pipe.__class__ = type(cls.__name__, (cls,), {"_execution_device": property(lambda self: torch.device("cpu")),
                                                 "__module__": cls.__module__})
    try:
        yield
    finally:
        pipe.__class__ = cls


def disable_context_windows(denoiser: nn.Module) -> None:
    remove_hook(denoiser, HOOK_NAME)


def window_calls(denoiser: nn.Module) -> int:
    hook = get_hook(denoiser, HOOK_NAME)
    return hook.calls if hook is not None else 0


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
