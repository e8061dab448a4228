"""TaylorGate: last-block Taylor forecast + first-block confidence gate (CG-Taylor; docs/POLICIES.md).

Per CFG stream, fp32 divided-difference histories by step index of
  f - the output of the FIRST block (order `gate_order`, default 3) and
  h - the output of the LAST block (order `order`, default 1),
refreshed on every full call. On a later call the first block always runs; its output f_t is compared with
the forecast f̂_t: e_t = mean|f̂_t - f_t| / mean|f_t| (per batch half, the worst half). If e_t < threshold,
blocks 2..N do not run and the last block's output is the forecast ĥ_t; else all blocks run and the
histories are refreshed. Always full during `warmup` steps and on the last step.

Refinements over the published gate (their effect on the sample model: bench/results/policies.md):
  min_gap (default 5) - differences are taken against a full step at least this many steps back (see
      TaylorHistory): adjacent-step secants are noisy and extrapolate worse than holding the value.
  max_skips (default 6; None = the gate alone decides) - the forecast horizon cap: at most this many steps since
      the stream's last full call. Bounds extrapolation where the first-block gate is not strict enough.
  step_size_power (default 0.5) - e_t is scaled by (step size / mean step size)^p before the test (sizes from the
      scheduler's timesteps): a forecast's error reaches the latents scaled by the step it drives, and shifted
      flow matching takes ~9x longer steps at the end than at the start; 0 = the published test.
  coast (default 0.75; 0 = always gate) - after a gate error below coast*τ the stream's next step is forecast
      without running the first block at all (never two such steps in a row). DiT only.
The defaults were chosen on held-out (prompt, seed) cases of the sample model (docs/POLICIES.md says how);
`coast=0, step_size_power=0` is the published gate.

UNet families (AnimateDiff, I2VGen-XL): "first block" = down_blocks[0] (its hidden output is the gate
signal f), "last block" = up_blocks[-2] (the deepest branch's output, forecast as h); the skipped part is
down_blocks[1:] + mid_block + up_blocks[:-1]; up_blocks[-1] and the conv in/out always run (see
docs/POLICIES.md).
"""
from __future__ import annotations

import math
from typing import Any

import torch

from vidrt.engine.policies.checks import check_number
from vidrt.engine.policies.contract import CallInfo, Layout, Policy
from vidrt.engine.policies.history import TaylorHistory, fp32_copy, rel_error
from vidrt.models.layout import CallOrder


class _Stream:
    def __init__(self, order: int, gate_order: int, min_gap: int):
        self.h = TaylorHistory(order, min_gap)
        self.f = TaylorHistory(gate_order, min_gap)
        self.f_now: torch.Tensor | None = None
        self.coast_step: int | None = None      # the step that may skip without the gate (see `coast`)


class TaylorGate(Policy):
    name = "taylor_gate"
    kind = "block"

    def __init__(self, threshold: float = 0.2, warmup: int = 3, order: int = 1, gate_order: int = 3,
                 final_full: bool = True, max_skips: int | None = 6, min_gap: int = 5, coast: float = 0.75,
                 step_size_power: float = 0.5):
        super().__init__()
        self.threshold = check_number("threshold", threshold, low=0.0)
        self.warmup = check_number("warmup", warmup, low=0, integer=True)
        self.order = check_number("order", order, low=0, integer=True, allow_inf=False)
        self.gate_order = check_number("gate_order", gate_order, low=0, integer=True, allow_inf=False)
        self.final_full = bool(final_full)
        self.max_skips = None if max_skips is None else check_number("max_skips", max_skips, low=0, integer=True)
        self.min_gap = check_number("min_gap", min_gap, low=1, integer=True, allow_inf=False)
        self.coast = check_number("coast", coast, low=0.0, high=1.0)
        self.step_size_power = check_number("step_size_power", step_size_power, low=0.0, allow_inf=False)
        self._streams: dict[str, _Stream] = {}
        self._errors: list[tuple[int, str, float]] = []
        self._coasted = 0

    def layout(self, s: CallOrder) -> Layout:
        # DiT: forecast the last block; UNet: forecast up_blocks[-2] (the tail up_blocks[-1] always runs)
        if s.kind == "dit":
            return Layout(deep_end=s.n, decide_after=(0,), decide_before=self.coast > 0)
        return Layout(deep_end=s.n - 1, decide_after=(0,))

    def reset(self) -> None:
        self._streams = {}
        self._errors = []
        self._coasted = 0

    def release(self) -> None:
        self._streams = {}

    def _stream(self, info: CallInfo) -> _Stream:
        st = self._streams.get(info.stream)
        if st is None:
            st = self._streams[info.stream] = _Stream(self.order, self.gate_order, self.min_gap)
        return st

    def _may_forecast(self, info: CallInfo, st: _Stream) -> bool:
        if info.step < self.warmup or (self.final_full and info.is_last) or st.h.step is None:
            return False
        if self.max_skips is not None and info.step - st.h.step > self.max_skips:
            return False   # horizon cap in steps (also counts steps another policy skipped meanwhile)
        return st.h.step < info.step

    def before_blocks(self, info: CallInfo) -> bool:
        st = self._stream(info)
        coasting = st.coast_step == info.step and self._may_forecast(info, st)
        st.coast_step = None
        if coasting:
            self._coasted += 1
        return coasting

    def after_block(self, info: CallInfo, index: int, feature: torch.Tensor) -> bool:
        st = self._stream(info)
        st.f_now = fp32_copy(feature)
        if not self._may_forecast(info, st):
            return False
        if math.isinf(self.threshold):
            err = 0.0
        else:
            err = rel_error(st.f.forecast(info.step), st.f_now, halves=info.batch)
            if self.step_size_power:
                err *= info.step_size ** self.step_size_power
        self._errors.append((info.step, info.stream, err))
        if err < self.coast * self.threshold:
            st.coast_step = info.step + 1     # confident: the next step may skip the gate too (never twice)
        return err < self.threshold

    def replacement(self, info: CallInfo) -> torch.Tensor:
        return self._stream(info).h.forecast(info.step)

    def observe_deep(self, info: CallInfo, feature: torch.Tensor) -> None:
        st = self._stream(info)
        st.h.update(feature, info.step)
        if st.f_now is not None:
            st.f.update(st.f_now, info.step)
        st.f_now = None

    def end_call(self, info: CallInfo, skipped: bool) -> None:
        st = self._streams.get(info.stream)
        if st is not None:
            st.f_now = None

    def state_bytes(self) -> int:
        return sum(s.h.nbytes() + s.f.nbytes() for s in self._streams.values())

    def extra_stats(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "warmup": self.warmup, "max_skips": self.max_skips, "coast": self.coast,
                "step_size_power": self.step_size_power, "coasted_calls": self._coasted}

    @property
    def gate_errors(self) -> list[tuple[int, str, float]]:
        """(step, stream, e_t) of every gate evaluation of the last generation."""
        return list(self._errors)
