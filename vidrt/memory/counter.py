"""Live tensor-storage bytes, counted at the dispatcher: the measuring instrument of the tracker (CPU runs) and
of the simulator (fake tensors, where it predicts an accelerator's peak)."""
from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveCounter(TorchDispatchMode):
    """Counts bytes of storages that ops create (on one device type, or on any when `device_type` is None)
    while the mode is active; `peak_bytes` is their high-water mark. Storages that existed before (parameters,
    inputs) are never counted. `owner` (a MemoryTracker) is told of every change."""

    def __init__(self, owner: Any = None, device_type: str | None = None):
        super().__init__()
        self.owner = owner
        self.device_type = device_type
        self.live: dict[int, tuple[weakref.ref, int]] = {}
        self.live_bytes = 0
        self.peak_bytes = 0

    def _changed(self) -> None:
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        if self.owner is not None:
            self.owner._on_change(self.live_bytes)

    def _freed(self, key: int) -> None:
        entry = self.live.pop(key, None)
        if entry is not None:
            self.live_bytes -= entry[1]
            self._changed()

    def track(self, t: torch.Tensor, skip: set[int]) -> None:
        if self.device_type is not None and t.device.type != self.device_type:
            return
        try:
            st = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # sparse / nested / opaque tensors
            return
        key = st._cdata
        if key in skip or key in self.live:
            return
        nbytes = st.nbytes()
        if nbytes == 0:
            return
        self.live[key] = (weakref.ref(st, lambda _ref, k=key: self._freed(k)), nbytes)
        self.live_bytes += nbytes
        self._changed()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        outs = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
        if outs:
            skip: set[int] = set()
            for a in tree_flatten((args, kwargs))[0]:
                if isinstance(a, torch.Tensor):
                    try:
                        skip.add(a.untyped_storage()._cdata)
                    except (RuntimeError, NotImplementedError):
                        pass
            for o in outs:
                self.track(o, skip)
        return out
