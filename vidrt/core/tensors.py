"""Counting tensor bytes: module weights and nested containers of tensors."""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def _device_matches(dev: torch.device, want: torch.device) -> bool:
    if dev.type != want.type:
        return False
    if want.type == "cuda" and want.index is not None and dev.index is not None:
        return dev.index == want.index
    return True


def module_bytes(modules: Iterable[nn.Module], device: torch.device | None = None,
                 seen: set[int] | None = None) -> int:
    """Bytes of the unique parameter/buffer storages of `modules` (optionally only those on `device`); tied
    weights count once (across calls too when the caller passes the same `seen`)."""
    seen = set() if seen is None else seen
    total = 0
    for mod in modules:
        if mod is None:
            continue
        tensors = list(mod.parameters()) + list(mod.buffers()) if isinstance(mod, nn.Module) else [mod]
        for t in tensors:
            if not isinstance(t, torch.Tensor):
                continue
            if device is not None and not _device_matches(t.device, device):
                continue
            st = t.untyped_storage()
            key = st._cdata
            if key in seen:
                continue
            seen.add(key)
            total += st.nbytes()
    return total


def tensors_nbytes(obj) -> int:
    """Bytes of every tensor in a tensor, list/tuple/dict of them, or a diffusers output."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (list, tuple)):
        return sum(tensors_nbytes(o) for o in obj)
    if isinstance(obj, dict):
        return sum(tensors_nbytes(o) for o in obj.values())
    if hasattr(obj, "to_tuple"):
        return tensors_nbytes(obj.to_tuple())
    return 0
