"""Named diffusers hooks on one module (no recursion into children): the one way vidrt's own denoiser-level
layers (context windows, OOM fallback, distributed) are put on and taken off."""
from __future__ import annotations

from diffusers.hooks import HookRegistry, ModelHook
from torch import nn


def replace_hook(module: nn.Module, hook: ModelHook, name: str) -> ModelHook:
    """Register `hook` under `name`, removing an earlier hook of that name first."""
    remove_hook(module, name)
    HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, name)
    return hook


def get_hook(module: nn.Module, name: str) -> ModelHook | None:
    registry = getattr(module, "_diffusers_hook", None)
    return registry.get_hook(name) if registry is not None else None


def remove_hook(module: nn.Module, name: str) -> None:
    if get_hook(module, name) is not None:
        module._diffusers_hook.remove_hook(name, recurse=False)
