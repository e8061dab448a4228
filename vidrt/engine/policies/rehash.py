"""StepRehash: cache the deep feature on key steps, reuse it on the others (Streamlined Inference; docs/POLICIES.md).

Key steps are picked adaptively, not by a fixed stride: on every call the shallow head runs (DiT: block 0;
UNet: down_blocks[0]) and its output is compared with the head output of the last key step,
drift = mean|f_t - f_key| / mean|f_key| (per batch half, the worst). If drift < `threshold` (and the cache
has been reused fewer than `max_reuse` times in a row) the deep part is skipped and the cached deep feature
used; otherwise this becomes a key step: everything runs and the cache is refreshed. The first `warmup`
steps and the last step are always key steps. The key steps of the last generation are in the stats.

What is cached:
  DiT (Wan): the residual added by the middle blocks 1..N-1-tail: r = h_{N-1-tail} - h_0. On a reused step,
             h_0 (fresh) + r feeds the `tail` last blocks, which run (default tail = 1).
  UNet:      the output of up_blocks[-2] - the deepest branch, as DeepCache; up_blocks[-1] always runs on
             the fresh skip connections from down_blocks[0] and conv_in.
"""
from __future__ import annotations

from typing import Any

import torch

from vidrt.engine.policies.checks import check_number
from vidrt.engine.policies.contract import CallInfo, Layout, Policy
from vidrt.engine.policies.history import fp32_copy, rel_error
from vidrt.models.layout import CallOrder


class _Stream:
    def __init__(self):
        self.head_key: torch.Tensor | None = None
        self.cache: torch.Tensor | None = None
        self.head_now: torch.Tensor | None = None
        self.reused = 0
        self.key_step: int | None = None


class StepRehash(Policy):
    name = "step_rehash"
    kind = "block"

    def __init__(self, threshold: float = 0.15, max_reuse: int = 3, warmup: int = 2, tail: int = 1,
                 final_full: bool = True):
        super().__init__()
        self.threshold = check_number("threshold", threshold, low=0.0)
        self.max_reuse = check_number("max_reuse", max_reuse, low=0, integer=True)
        self.warmup = check_number("warmup", warmup, low=1, integer=True)
        self.tail = check_number("tail", tail, low=0, integer=True, allow_inf=False)
        self.final_full = bool(final_full)
        self._streams: dict[str, _Stream] = {}
        self._key_steps: set[int] = set()
        self._drifts: list[tuple[int, str, float]] = []
        self._residual = False

    def layout(self, s: CallOrder) -> Layout:
        if s.kind == "dit":
            tail = min(self.tail, max(s.n - 2, 0))
            self._residual = True
            return Layout(deep_end=s.n - tail, decide_after=(0,))
        self._residual = False
        return Layout(deep_end=s.n - 1, decide_after=(0,))

    def reset(self) -> None:
        self._streams = {}
        self._key_steps = set()
        self._drifts = []

    def release(self) -> None:
        self._streams = {}

    def _stream(self, info: CallInfo) -> _Stream:
        return self._streams.setdefault(info.stream, _Stream())

    def after_block(self, info: CallInfo, index: int, feature: torch.Tensor) -> bool:
        st = self._stream(info)
        st.head_now = fp32_copy(feature)
        if st.cache is None or info.step < self.warmup or (self.final_full and info.is_last):
            return False
        if st.reused >= self.max_reuse or (st.key_step is not None and st.key_step >= info.step):
            return False
        drift = rel_error(st.head_now, st.head_key, halves=info.batch)
        self._drifts.append((info.step, info.stream, drift))
        return drift < self.threshold

    def replacement(self, info: CallInfo) -> torch.Tensor:
        st = self._stream(info)
        st.reused += 1
        if self._residual:
            return st.head_now + st.cache
        return st.cache.clone()   # the tail may write into its input in place

    def observe_deep(self, info: CallInfo, feature: torch.Tensor) -> None:
        st = self._stream(info)
        deep = fp32_copy(feature)
        if self._residual and st.head_now is not None:
            deep.sub_(st.head_now)
        st.cache = deep
        st.head_key = st.head_now
        st.reused = 0
        st.key_step = info.step
        self._key_steps.add(info.step)

    def end_call(self, info: CallInfo, skipped: bool) -> None:
        st = self._streams.get(info.stream)
        if st is not None:
            st.head_now = None

    def state_bytes(self) -> int:
        total = 0
        for st in self._streams.values():
            for t in (st.cache, st.head_key):
                if t is not None:
                    total += t.numel() * t.element_size()
        return total

    def extra_stats(self) -> dict[str, Any]:
        return {"key_steps": sorted(self._key_steps), "threshold": self.threshold}

    @property
    def key_steps(self) -> list[int]:
        return sorted(self._key_steps)
