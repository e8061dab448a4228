"""Find submodules of a denoiser by class, outermost first (the adapters' role descriptions)."""
from __future__ import annotations

from torch import nn


def outermost(module: nn.Module, types: tuple[type, ...], *, skip: tuple[type, ...] = ()) -> tuple[str, ...]:
    """Qualified names of submodules that are instances of `types` and not inside another match."""
    found: list[str] = []
    for name, sub in module.named_modules():
        if not name or not isinstance(sub, types) or isinstance(sub, skip):
            continue
        if any(name.startswith(prefix + ".") for prefix in found):
            continue
        found.append(name)
    return tuple(found)
