"""An injected allocation limit, so the OOM fallback can be exercised (and tested) on a CPU."""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class AllocationLimit(TorchDispatchMode):
    """Raise `torch.OutOfMemoryError` for any op whose output storage exceeds `limit_bytes`."""

    def __init__(self, limit_bytes: int):
        super().__init__()
        self.limit = int(limit_bytes)
        self.refused = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage()._cdata for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.untyped_storage()._cdata in inputs:
                continue  # views and in-place results allocate nothing new
            if t.untyped_storage().nbytes() > self.limit:
                self.refused += 1
                raise torch.OutOfMemoryError(
                    f"injected limit: {func} wanted {t.untyped_storage().nbytes()} bytes > {self.limit}")
        return out

