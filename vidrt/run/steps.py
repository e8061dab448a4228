"""What happens around each denoising step of a render: progress, per-step checkpoints, resuming mid-trajectory
and stopping after a step on Ctrl-C. Attached as the "run" feature (vidrt.engine.attach): every supported
pipeline calls `scheduler.step` once per step and `scheduler.set_timesteps` once per generation."""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.hooks import ModelHook

from vidrt.core.errors import VidrtError
from vidrt.engine import attach
from vidrt.models.base import ModelAdapter, RenderRequest
from vidrt.run.checkpoint import Checkpoint, StepCheckpointer, restore_generator, restore_scheduler

FEATURE = "run"


class RenderInterrupted(VidrtError):
    """Ctrl-C: the render stopped after a complete step whose checkpoint is on disk."""

    exit_code = 130   # what a shell reports for SIGINT


@dataclass
class StepControl:
    """What happens around each scheduler step: progress, checkpoints, resume and interrupt."""

    total_steps: int
    checkpointer: StepCheckpointer | None = None
    resume: Checkpoint | None = None
    policy: Any = None
    on_step: Callable[[int, int], None] | None = None   # (done, total), for progress
    interrupted: bool = False      # set by the SIGINT handler
    loop_device: torch.device | None = None  # where the pipeline's loop tensors live (None: the render device)
    warn: Callable[[str], None] | None = None  # one-line notes for the user (e.g. a resume that cannot be exact)

    @property
    def done_before(self) -> int:
        return self.resume.step if self.resume is not None else 0


class CallOnce(ModelHook):
    """Runs `fn()` before the first call of a module (a stage boundary, the end of a resumed schedule's cut)."""

    def __init__(self, fn: Callable[[], None]):
        super().__init__()
        self.fn: Callable[[], None] | None = fn

    def pre_forward(self, module, *args, **kwargs):
        if self.fn is not None:
            fn, self.fn = self.fn, None
            fn()
        return args, kwargs


@contextlib.contextmanager
def step_hooks(pipe, adapter: ModelAdapter, denoiser, req: RenderRequest, generator, control: StepControl,
               device: torch.device) -> Iterator[None]:
    """Wrap `scheduler.step` to checkpoint, report progress and honour an interrupt, and - when resuming -
    `scheduler.set_timesteps` to restore the saved scheduler state and start the loop at the next step."""
    scheduler = pipe.scheduler
    done = control.done_before
    # on resume: the saved random state, in a generator of the kind that saved it (another device's generator
    # when the checkpoint was made elsewhere: then the scheduler's own draws come from it)
    restored = generator
    if control.resume is not None:
        restored = restore_generator(generator, control.resume.generator, warn=control.warn)

    def step(call, *args, **kwargs):
        nonlocal done
        if restored is not generator and kwargs.get("generator") is generator:
            kwargs["generator"] = restored
        out = call(*args, **kwargs)
        done += 1
        latents = out[0] if isinstance(out, tuple) else out.prev_sample
        if control.checkpointer is not None:
            control.checkpointer.save(done, control.total_steps, adapter.pipeline_latents(latents, req), scheduler,
                                      restored, policy_state(control.policy))
        if control.on_step is not None:
            control.on_step(done, control.total_steps)
        if control.interrupted and done < control.total_steps:
            raise RenderInterrupted(f"interrupted after step {done}/{control.total_steps}")
        return out

    attach.wrap_method(scheduler, "step", step, FEATURE)
    # a video-to-video render on a family whose text-to-video pipeline runs it (`video_schedule_cut`) starts that
    # pipeline's schedule at the first step the strength leaves, as diffusers' video-to-video pipelines start theirs
    cut = req.steps - req.denoise_steps if getattr(req, "video", None) is not None and adapter.video_schedule_cut else 0
    if control.resume is not None or cut:
        ckpt = control.resume

        def set_timesteps(call, *args, **kwargs):
            call(*args, **kwargs)
            if ckpt is not None:
                restore_scheduler(scheduler, ckpt.scheduler, device)
            full = scheduler.timesteps
            # the pipeline's loop starts at the next step (`cut` steps of `order` entries each, then the saved
            # count of scheduler.step calls, one per entry) ...
            scheduler.timesteps = full[cut * scheduler.order + (ckpt.step if ckpt is not None else 0):]

            def restore_full():                     # ... while the scheduler itself sees the whole schedule
                scheduler.timesteps = full

            attach.wrap_module(denoiser, CallOnce(restore_full), FEATURE, "resume")

        attach.wrap_method(scheduler, "set_timesteps", set_timesteps, FEATURE)
        if cut and hasattr(scheduler, "set_begin_index"):
            # the pipeline sets its scheduler's first step index (WanPipeline: 0); the cut schedule's is `cut`
            attach.wrap_method(scheduler, "set_begin_index",
                               lambda call, begin_index=0: call(begin_index + cut * scheduler.order), FEATURE)
        if ckpt is not None:
            set_policy_state(control.policy, ckpt.policy)
    try:
        yield
    finally:
        attach.detach(scheduler, FEATURE)
        attach.unwrap_module(denoiser, FEATURE, "resume")


def policy_state(policy) -> Any:
    getter = getattr(policy, "state_dict", None)
    return getter() if callable(getter) else None


def set_policy_state(policy, state) -> None:
    setter = getattr(policy, "load_state_dict", None)
    if callable(setter) and state is not None:
        setter(state)


@contextlib.contextmanager
def interrupt_after_step(control: StepControl) -> Iterator[None]:
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
