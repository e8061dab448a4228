"""Slots for trained acceleration methods (docs/POLICIES.md). vidrt ships the plumbing, no weights.

* `ExitHead` / `EarlyExit` - AdaDiff (seed 003): a small uncertainty-estimation module (UEM) sits after each
  transformer block; at inference, when the head's uncertainty for the current hidden state is below a
  threshold, the remaining blocks are skipped and the hidden state goes straight to the output norm /
  projection. A trained head implements `ExitHead.__call__(hidden, block_index, step, num_steps) -> float`
  (uncertainty, lower = more confident) and may implement `project(hidden, block_index)` to map the exiting
  hidden state to what the last block would have produced (identity by default). DiT denoisers only.

* `StepInterpolator` / `LearnedInterpolation` - ILF, Inner Loop Feedback (seed 002): a lightweight feedback
  module, trained by distillation with the backbone frozen, predicts the deep feature of the current step from
  the output of an early block (`at_block`) and the deep feature cached on the last full step. On non-key steps
  the blocks after `at_block` do not run and the module's prediction is used. A trained module implements
  `StepInterpolator.__call__(feature, cached_deep, step, cached_step, num_steps) -> deep feature` (same shape
  as `cached_deep`). DiT: deep feature = last block output; UNet: up_blocks[-2] output (as TaylorGate).

Both attach like any vidrt policy (`vidrt.enable_policy(pipe, EarlyExit(my_head))`) and report the same stats.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from vidrt.core.errors import VidrtError
from vidrt.engine.policies.checks import check_number
from vidrt.engine.policies.contract import CallInfo, Layout, Policy
from vidrt.engine.policies.history import fp32_copy
from vidrt.models.layout import CallOrder


@runtime_checkable
class ExitHead(Protocol):
    def __call__(self, hidden: torch.Tensor, block_index: int, step: int, num_steps: int | None) -> float:
        """Uncertainty of exiting after `block_index` (lower = more confident)."""


@runtime_checkable
class StepInterpolator(Protocol):
    def __call__(self, feature: torch.Tensor, cached_deep: torch.Tensor, step: int, cached_step: int,
                 num_steps: int | None) -> torch.Tensor:
        """The deep feature of `step`, predicted from an early block's `feature` and the last full step's."""


class EarlyExit(Policy):
    """AdaDiff-style layer-wise early exit driven by a trained `ExitHead`."""

    name = "early_exit"
    kind = "block"

    def __init__(self, head: ExitHead, threshold: float = 0.1, min_blocks: int = 1, warmup: int = 1,
                 final_full: bool = True):
        super().__init__()
        if not callable(head):
            raise ValueError("head: expected a callable ExitHead")
        self.head = head
        self.threshold = check_number("threshold", threshold, low=0.0)
        self.min_blocks = check_number("min_blocks", min_blocks, low=1, integer=True, allow_inf=False)
        self.warmup = check_number("warmup", warmup, low=0, integer=True)
        self.final_full = bool(final_full)
        self._exit: torch.Tensor | None = None
        self._exit_index: int | None = None
        self.exits: list[tuple[int, str, int]] = []

    def layout(self, s: CallOrder) -> Layout:
        if s.kind != "dit":
            raise VidrtError("acceleration.policy: early_exit needs a transformer (DiT) denoiser")
        return Layout(deep_end=s.n, decide_after=tuple(range(self.min_blocks - 1, s.n - 1)))

    def reset(self) -> None:
        self.exits = []

    def after_block(self, info: CallInfo, index: int, feature: torch.Tensor) -> bool:
        if info.step < self.warmup or (self.final_full and info.is_last):
            return False
        if float(self.head(feature, index, info.step, info.num_steps)) < self.threshold:
            project = getattr(self.head, "project", None)
            self._exit = project(feature, index) if callable(project) else feature
            self._exit_index = index
            self.exits.append((info.step, info.stream, index))
            return True
        return False

    def replacement(self, info: CallInfo) -> torch.Tensor:
        out, self._exit = self._exit, None
        return out

    def release(self) -> None:
        self._exit = None

    def extra_stats(self) -> dict[str, Any]:
        return {"exits": [list(e) for e in self.exits]}


class LearnedInterpolation(Policy):
    """ILF-style: a trained `StepInterpolator` replaces the deep blocks on non-key steps."""

    name = "learned_interpolation"
    kind = "block"

    def __init__(self, interpolator: StepInterpolator, at_block: int = 0, every: int = 2, warmup: int = 2,
                 final_full: bool = True):
        super().__init__()
        if not callable(interpolator):
            raise ValueError("interpolator: expected a callable StepInterpolator")
        self.interpolator = interpolator
        self.at_block = check_number("at_block", at_block, low=0, integer=True, allow_inf=False)
        self.every = check_number("every", every, low=1, integer=True, allow_inf=False)
        self.warmup = check_number("warmup", warmup, low=0, integer=True)
        self.final_full = bool(final_full)
        self.reset()

    def layout(self, s: CallOrder) -> Layout:
        deep_end = s.n if s.kind == "dit" else s.n - 1
        if self.at_block >= deep_end - 1:
            raise VidrtError(f"acceleration.at_block: {self.at_block} leaves no block to replace (denoiser has {s.n})")
        return Layout(deep_end=deep_end, decide_after=(self.at_block,))

    def reset(self) -> None:
        self._cache: dict[str, tuple[int, torch.Tensor]] = {}
        self._feature: dict[str, torch.Tensor] = {}
        self.interpolated: list[tuple[int, str]] = []

    def after_block(self, info: CallInfo, index: int, feature: torch.Tensor) -> bool:
        cached = self._cache.get(info.stream)
        if cached is None or info.step < self.warmup or (self.final_full and info.is_last):
            return False
        if (info.step - cached[0]) % self.every == 0:
            return False
        self._feature[info.stream] = feature
        return True

    def replacement(self, info: CallInfo) -> torch.Tensor:
        step, deep = self._cache[info.stream]
        feature = self._feature.pop(info.stream)
        self.interpolated.append((info.step, info.stream))
        out = self.interpolator(feature, deep, info.step, step, info.num_steps)
        return out.clone() if out is deep else out

    def observe_deep(self, info: CallInfo, feature: torch.Tensor) -> None:
        self._cache[info.stream] = (info.step, fp32_copy(feature))

    def release(self) -> None:
        self._cache, self._feature = {}, {}

    def state_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for _, t in self._cache.values())
