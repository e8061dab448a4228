"""A small live-storage counter for the slicer's own tests and benchmark.

`peak_activation_bytes()` is a TorchDispatchMode that records every new tensor storage an op returns and
its release (a weakref on the storage), so `peak` is the high-water mark of bytes allocated *inside* the
block: activations only — parameters and inputs existed before and are not counted. Works on real CPU
tensors and on fake tensors (FakeTensorMode), where it predicts the accelerator's activation peak.
"""
from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class peak_activation_bytes(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.live: dict[int, tuple[weakref.ref, int]] = {}
        self.now = 0
        self.peak = 0

    def _freed(self, key: int) -> None:
        entry = self.live.pop(key, None)
        if entry is not None:
            self.now -= entry[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
        if outs:
            seen = set()
            for a in tree_flatten((args, kwargs))[0]:
                if isinstance(a, torch.Tensor):
                    try:
                        seen.add(a.untyped_storage()._cdata)
                    except (RuntimeError, NotImplementedError):
                        pass
            for o in outs:
                try:
                    st = o.untyped_storage()
                except (RuntimeError, NotImplementedError):
                    continue
                key = st._cdata
                if key in seen or key in self.live:
                    continue
                n = st.nbytes()
                if n == 0:
                    continue
                self.live[key] = (weakref.ref(st, lambda _r, k=key: self._freed(k)), n)
                self.now += n
                self.peak = max(self.peak, self.now)
        return out
