"""AdaptiveSkip: skip whole denoiser calls where the latent trajectory is smooth (AdaptiveDiffusion; docs/POLICIES.md).

The latents a step starts from are the denoiser's input (x_{k-1}, the result of the previous scheduler step),
so the policy observes them at the first call of each step, in fp32, and keeps
d_k = mean|x_k - x_{k-1}|. Step j (j >= `warmup`, default 4) reuses the previous noise prediction when
|(d_{j-1} + d_{j-3}) / 2 - d_{j-2}| <= delta * d_{j-2}  (the third-order latent-difference test), at most
`max_skips` steps in a row. The scheduler step still runs on the reused prediction. Every CFG stream keeps
its own cached prediction (Wan: one per cache_context; UNet: the batch of 2 is one cached output).
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from vidrt.core.tensors import tensors_nbytes
from vidrt.engine.policies.checks import check_number
from vidrt.engine.policies.contract import CallInfo, Policy


class AdaptiveSkip(Policy):
    name = "adaptive"
    kind = "step"

    def __init__(self, delta: float = 0.01, max_skips: int = 4, warmup: int = 4, final_full: bool = False):
        super().__init__()
        self.delta = check_number("delta", delta, low=0.0)
        self.max_skips = check_number("max_skips", max_skips, low=0, integer=True)
        self.warmup = max(4, check_number("warmup", warmup, low=0, integer=True, allow_inf=False))
        self.final_full = bool(final_full)
        self.reset()

    def reset(self) -> None:
        self._prev: torch.Tensor | None = None
        self._prev_step: int | None = None
        self._d: dict[int, float] = {}
        self._decision: dict[int, bool] = {}
        self._run = 0
        self._cache: dict[str, Any] = {}
        self._skipped: list[int] = []

    def _observe(self, info: CallInfo) -> None:
        if info.latents is None:
            return
        x = info.latents.detach().to(torch.float32)
        if self._prev is not None and self._prev_step == info.step - 1 and self._prev.shape == x.shape:
            self._d[info.step - 1] = float((x - self._prev).abs().mean())
        self._prev = x.clone() if x is info.latents else x
        self._prev_step = info.step

    def _decide(self, info: CallInfo) -> bool:
        j = info.step
        if j < self.warmup or self._run >= self.max_skips or (self.final_full and info.is_last):
            return False
        d1, d2, d3 = self._d.get(j - 1), self._d.get(j - 2), self._d.get(j - 3)
        if d1 is None or d2 is None or d3 is None:
            return False
        return abs((d1 + d3) / 2.0 - d2) <= self.delta * d2

    def wrap_call(self, info: CallInfo, run: Callable[[], Any]) -> Any:
        if info.step not in self._decision:
            self._observe(info)
            skip = self._decide(info)
            self._decision[info.step] = skip
            self._run = self._run + 1 if skip else 0
            if skip:
                self._skipped.append(info.step)
        if self._decision[info.step] and info.stream in self._cache:
            return self._cache[info.stream]
        out = run()
        self._cache[info.stream] = out
        return out

    def release(self) -> None:
        self._prev, self._cache = None, {}

    def state_bytes(self) -> int:
        return tensors_nbytes(self._prev) + tensors_nbytes(self._cache)

    def extra_stats(self) -> dict[str, Any]:
        return {"delta": self.delta, "max_skips": self.max_skips}

    @property
    def skipped_steps(self) -> list[int]:
        return list(self._skipped)
