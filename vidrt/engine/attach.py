"""Named diffusers hooks on one module (no recursion into children): the one way vidrt's own denoiser-level
layers (context windows, OOM fallback, distributed) are put on and taken off."""
from __future__ import annotations

import inspect
from typing import Any

from diffusers.hooks import HookRegistry, ModelHook
from torch import nn


class ArgumentsHook(ModelHook):
    """A hook that reads the wrapped forward's arguments by name (`self.arguments(module, args, kwargs)`),
    whatever mix of positional and keyword arguments the caller used."""

    signature: inspect.Signature | None = None

    def initialize_hook(self, module):
        self.signature = inspect.signature(type(module).forward)
        return module

    def arguments(self, module, args, kwargs) -> dict[str, Any]:
        bound = self.signature.bind_partial(module, *args, **kwargs).arguments
        bound.pop(next(iter(self.signature.parameters)))   # self
        return bound


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
