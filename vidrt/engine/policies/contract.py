"""The step-policy contract: how a policy attaches to a denoiser and what it is told.

A *policy* decides whether a denoiser call, or the deep part of one, runs. It never edits weights: the
controller (controller.py) puts a diffusers hook on the denoiser and on each of its top-level blocks, outside
slicing, weight streaming and the other vidrt features (vidrt.engine.attach), so a skipped block costs no
compute and no weight transfer; `disable_policy` removes them.

What a policy sees, per denoiser call, is a `CallInfo`:

* ``step`` - the step index of this generation (0-based). Taken from the pipeline's ``cache_context``
  (``step_index`` on Wan, which diffusers hands to stateful hooks), else from the position of the timestep in the scheduler's ``timesteps`` (the
  scheduler's ``set_timesteps`` is observed), else counted from changes of the timestep value.
* ``stream`` - the CFG stream. Wan calls the transformer once per stream inside
  ``transformer.cache_context("cond"|"uncond")``; the name of that context is the stream. Without a context,
  the k-th call at the same timestep is stream ``"call{k}"``. UNet pipelines (AnimateDiff, I2VGen-XL) send one
  batch of 2 = (uncond, cond); there a policy keeps its state per *batch half* (``CallInfo.batch``) - the
  histories are stored as stacked tensors (elementwise math never mixes halves) and every error/drift is
  measured per half, the decision taken only when all halves agree.
* a new generation (all per-generation state reset) starts when ``scheduler.set_timesteps`` is called, when
  the context's step index goes back, or (bare denoiser) when the timestep increases.

Two kinds of policy:

* ``kind = "step"``: wraps the whole denoiser call (`Policy.wrap_call`) and may return a cached output
  without running it (AdaptiveSkip).
* ``kind = "block"``: decides inside a call. The denoiser's blocks are laid out in call order
  (`vidrt.models.layout.CallOrder`): DiT - ``blocks[0..N-1]``; UNet - ``down_blocks + [mid_block] + up_blocks``. After each block
  before ``deep_end - 1`` the policy may say "skip" (`Policy.after_block`); the remaining blocks up to
  ``deep_end - 1`` then do not run (they return placeholders of the right shape without computing) and block
  ``deep_end - 1`` returns `Policy.replacement`. Blocks from ``deep_end`` on (the tail) always run.

Only one block policy may be active at a time; any number of step policies wrap it (a list composes).
Histories live in fp32 whatever the model dtype.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from vidrt.models.layout import CallOrder


@dataclass
class CallInfo:
    step: int
    stream: str
    num_steps: int | None
    timestep: float
    batch: int                      # batch of the denoiser input; UNet+CFG: 2 halves (uncond, cond)
    latents: torch.Tensor | None    # the denoiser's input hidden_states / sample (not a copy)
    step_size: float = 1.0          # (t_step - t_next) / mean spacing of the schedule; 1.0 when the schedule is unknown

    @property
    def is_last(self) -> bool:
        return self.num_steps is not None and self.step >= self.num_steps - 1




@dataclass(frozen=True)
class Layout:
    """Blocks ``[0, deep_end-1)`` may end in a skip decision; ``deep_end-1`` outputs the deep feature."""

    deep_end: int
    decide_after: tuple[int, ...] = (0,)   # block indices after which `after_block` is asked
    decide_before: bool = False            # ask `before_blocks` before block 0 (DiT only: the residual stream
    #                                        passes a skipped block 0 untouched; a UNet's skip connections don't)


class Policy:
    """Base class. Subclasses set `name` and `kind` and override the hooks they need."""

    name: str = "policy"
    kind: str = "step"              # "step" or "block"

    def __init__(self) -> None:
        self.num_steps_hint: int | None = None

    # lifecycle
    def bind(self, structure: CallOrder) -> None:
        """Called once when attached."""
        self.structure = structure

    def reset(self) -> None:
        """A new generation starts: drop every per-generation state."""

    def release(self) -> None:
        """The policy was detached: drop the tensors it holds between steps (the records of the last generation,
        e.g. TaylorGate.gate_errors, stay readable): on a GPU they can be a large share of the memory."""

    # step-level
    def wrap_call(self, info: CallInfo, run: Callable[[], Any]) -> Any:
        return run()

    # block-level
    def layout(self, structure: CallOrder) -> Layout | None:
        return None

    def before_blocks(self, info: CallInfo) -> bool:
        """Asked before block 0 when the layout says `decide_before`: True replaces blocks 0..deep_end-1."""
        return False

    def after_block(self, info: CallInfo, index: int, feature: torch.Tensor) -> bool:
        return False

    def replacement(self, info: CallInfo) -> torch.Tensor:
        raise NotImplementedError

    def observe_deep(self, info: CallInfo, feature: torch.Tensor) -> None:
        """Block ``deep_end-1`` ran; `feature` is its output (a live tensor: copy what you keep)."""

    def end_call(self, info: CallInfo, skipped: bool) -> None:
        """The call finished; `skipped` tells whether the deep part was replaced."""

    # reporting
    def state_bytes(self) -> int:
        return 0

    def extra_stats(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        fields = {k: v for k, v in vars(self).items() if not k.startswith("_") and k not in ("structure", "num_steps_hint")
                  and isinstance(v, (int, float, str, bool, type(None)))}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in fields.items())})"
