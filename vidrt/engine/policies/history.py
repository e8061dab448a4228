"""Feature histories the policies keep: fp32 copies, relative errors per CFG batch half, Taylor terms."""
from __future__ import annotations

import math

import torch


def fp32_copy(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to(torch.float32, copy=True)



def rel_error(estimate: torch.Tensor, actual: torch.Tensor, halves: int = 1) -> float:
    """mean|estimate-actual| / mean|actual|, per batch half, the worst half returned."""
    a = actual.detach().float()
    e = estimate.detach().float()
    if halves > 1 and a.shape[0] % halves == 0:
        a_parts, e_parts = a.chunk(halves, 0), e.chunk(halves, 0)
    else:
        a_parts, e_parts = (a,), (e,)
    worst = 0.0
    for ep, ap in zip(e_parts, a_parts):
        denom = float(ap.abs().mean())
        num = float((ep - ap).abs().mean())
        worst = max(worst, num / denom if denom > 0 else (0.0 if num == 0 else math.inf))
    return worst



class TaylorHistory:
    """Finite differences of one feature by step index, in fp32 (TaylorSeer-style divided differences).

    `min_gap`: the differences are taken against the last full step at least `min_gap` steps back (the
    *base*). A full step closer than that refreshes the value (order 0) and keeps the derivatives estimated
    over the wider baseline: step-to-step differences of a denoiser's features are noisy, and a secant over
    adjacent steps extrapolates worse than no extrapolation at all (seen on the trained sample model).
    min_gap=1 gives plain adjacent differences. Costs one extra tensor (the base value) at most."""

    def __init__(self, max_order: int, min_gap: int = 1) -> None:
        self.max_order = max_order
        self.min_gap = max(1, int(min_gap))
        self.terms: list[torch.Tensor] = []
        self.step: int | None = None
        self._base: list[torch.Tensor] = []
        self._base_step: int | None = None

    def update(self, x: torch.Tensor, step: int) -> None:
        x = fp32_copy(x)
        if self._base_step is None or step - self._base_step >= self.min_gap:
            new = [x]
            if self._base_step is not None and step > self._base_step:
                dist = float(step - self._base_step)
                for i in range(min(len(self._base), self.max_order)):
                    new.append((new[i] - self._base[i]) / dist)
            self.terms = new
            self._base, self._base_step = list(new), step
        else:
            self.terms = [x] + self.terms[1:]
        self.step = step

    @property
    def order(self) -> int:
        return len(self.terms) - 1

    def forecast(self, step: int, order: int | None = None) -> torch.Tensor:
        if not self.terms:
            raise RuntimeError("empty history")
        k = float(step - self.step)
        top = self.order if order is None else min(order, self.order)
        out = self.terms[0].clone()
        for i in range(1, top + 1):
            out.add_(self.terms[i], alpha=k ** i / math.factorial(i))
        return out

    def nbytes(self) -> int:
        seen = {id(t): t for t in self.terms + self._base}
        return sum(t.numel() * t.element_size() for t in seen.values())
