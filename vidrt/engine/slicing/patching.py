"""Install / remove a replacement forward on a module instance, innermost in any hook chain.

A slicing forward replaces a module's *computation*, so it must sit below every wrapper other code put
around the module: diffusers hooks (`HookRegistry`: group offloading, caches, vidrt's step policies) and
accelerate hooks (`_old_forward`, model CPU offload). Those wrappers keep running around it, in their
order, whether they were installed before or after slicing. Removing the patch puts back exactly the
forward that was there: the instance attribute is deleted when there was none, so `module.forward` is
the class's own method again.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

_MISSING = object()
ATTR = "_vidrt_slicing_patch"


@dataclass
class Patch:
    original: Any          # what was in the slot before (or _MISSING for "no instance attribute")
    installed: Callable    # our bound replacement
    kind: str              # which slicer installed it ("wan-block", "spatial", ...)
    info: dict


def _bound(module: nn.Module, fn: Callable) -> Callable:
    bound = functools.partial(fn, module)
    bound._vidrt_sliced = True  # type: ignore[attr-defined]
    return bound


def _innermost_slot(module: nn.Module):
    """(container, attribute name) of the innermost forward slot of `module`.

    Order of wrappers from outside in: diffusers HookRegistry -> accelerate hook -> the forward itself.
    """
    registry = getattr(module, "_diffusers_hook", None)
    if registry is not None and getattr(registry, "_fn_refs", None):
        ref = registry._fn_refs[0]
        if ref.original_forward is not None:
            return ref, "original_forward"
        return ref, "forward"
    if hasattr(module, "_hf_hook") and hasattr(module, "_old_forward"):
        return module, "_old_forward"
    return None, "forward"


def install(module: nn.Module, fn: Callable, kind: str, **info) -> bool:
    """Make `fn(module, *args, **kwargs)` the module's computation. Idempotent: False if already patched."""
    if getattr(module, ATTR, None) is not None:
        return False
    new = _bound(module, fn)
    container, name = _innermost_slot(module)
    if container is None:
        original = module.__dict__.get("forward", _MISSING)
        module.forward = new
    else:
        original = getattr(container, name)
        setattr(container, name, new)
    object.__setattr__(module, ATTR, Patch(original, new, kind, dict(info)))
    return True


def _replace_in_chain(module: nn.Module, old: Callable, new: Any) -> bool:
    """Find `old` in the module's wrapper chain and put `new` there (a wrapper may have been added on top)."""
    if module.__dict__.get("forward") is old:
        if new is _MISSING:
            del module.forward
        else:
            module.forward = new
        return True
    new_value = new if new is not _MISSING else getattr(type(module), "forward").__get__(module)
    if getattr(module, "_old_forward", None) is old:
        module._old_forward = new_value
        return True
    registry = getattr(module, "_diffusers_hook", None)
    for ref in getattr(registry, "_fn_refs", None) or ():
        for attr in ("original_forward", "forward"):
            if getattr(ref, attr, None) is old:
                setattr(ref, attr, new_value)
                return True
    return False


def remove(module: nn.Module) -> bool:
    patch: Patch | None = getattr(module, ATTR, None)
    if patch is None:
        return False
    if not _replace_in_chain(module, patch.installed, patch.original):
        raise RuntimeError(f"vidrt slicing: cannot find its forward on {type(module).__name__} to restore it")
    object.__delattr__(module, ATTR)
    return True


def patched(module: nn.Module) -> Patch | None:
    return getattr(module, ATTR, None)


def call_original(module: nn.Module, *args, **kwargs):
    """Run the computation that was in place before slicing (normally the class's forward)."""
    patch = patched(module)
    if patch is not None and patch.original is not _MISSING:
        return patch.original(*args, **kwargs)
    return type(module).forward(module, *args, **kwargs)
