"""Out-of-memory fallback: when a denoiser evaluation runs out of memory, free caches, halve the slicing chunk
sizes and run that evaluation again (the scheduler has not stepped yet, so this retries the step).

    state = vidrt.enable_oom_fallback(pipe, OomFallbackConfig(log=print))
    ...; state.retries            # the chunk sizes of every retry
    vidrt.disable_oom_fallback(pipe)
"""
from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from diffusers.hooks import ModelHook

from vidrt.core.errors import VidrtError
from vidrt.engine import attach
from vidrt.engine.slicing import chunks_for, enable_slicing, slicing_state
from vidrt.models import denoisers_of

FEATURE = "oom"


@dataclass(frozen=True)
class OomFallbackConfig:
    """log: called with one line per retry (the runner prints it); None: silent."""

    log: Callable[[str], None] | None = None


@dataclass
class OomState:
    """retries: the chunk sizes of every retry since the last reset (the sidecar's `oom_retries`)."""

    retries: list[dict[str, int]] = field(default_factory=list)

    def reset(self) -> None:
        self.retries = []


class OomFallbackHook(ModelHook):
    """Retry a denoiser call after an OOM with halved chunk sizes, down to one element per chunk."""

    def __init__(self, target, config: OomFallbackConfig, state: OomState):
        super().__init__()
        self.target, self.config, self.state = target, config, state

    def new_forward(self, module, *args, **kwargs):
        while True:
            try:
                return self.fn_ref.original_forward(*args, **kwargs)
            except torch.OutOfMemoryError as exc:
                message = str(exc).splitlines()[0] if str(exc) else "out of memory"
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            sample = next(a for a in list(args) + list(kwargs.values())
                          if isinstance(a, torch.Tensor) and a.ndim == 5)
            if slicing_state(module) is None:        # slicing was off: turning it on is usually enough
                enable_slicing(module)
                chunks = chunks_for(module, sample)
            else:
                now = chunks_for(module, sample)
                if all(v <= 1 for v in now.values()):
                    raise VidrtError(f"out of memory even with one frame/token/position per chunk ({message}); "
                                     "lower height/width/frames or use memory.offload: group") from None
                chunks = {k: max(1, v // 2) for k, v in now.items()}
                enable_slicing(self.target, **chunks)
            self.state.retries.append(chunks)
            if self.config.log is not None:
                self.config.log(f"out of memory in the denoiser ({message}); retrying with chunks {chunks}")


def enable_oom_fallback(pipe, config: OomFallbackConfig = OomFallbackConfig()) -> OomState:
    """Put the fallback around every denoiser of `pipe` (or a bare denoiser); returns its state."""
    state = OomState()
    for den in denoisers_of(pipe):
        attach.wrap_module(den, OomFallbackHook(pipe, config, state), FEATURE)
        attach.set_state(den, FEATURE, state)
    return state


def disable_oom_fallback(pipe) -> None:
    for den in denoisers_of(pipe):
        attach.detach(den, FEATURE)


def oom_state(pipe) -> OomState | None:
    dens = denoisers_of(pipe)
    return attach.get_state(dens[0], FEATURE) if dens else None
