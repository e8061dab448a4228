"""A pipeline's real classes built at full size from their configs, for FakeTensorMode (nothing allocated).

Layers a class repeats (vidrt.models.known.REPEATED_LAYERS) are built `keep` times instead of N times: the
activation peak is the same and the build and the forward much faster; the missing layers' parameters are
added from one layer's size (`mods["_extra_params"]`).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vidrt.core.errors import VidrtError
from vidrt.core.tensors import module_bytes
from vidrt.models.known import REPEATED_LAYERS, Component, build_module

KEEP_LAYERS = 2


def cast_(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """`module.to(dtype)` for fake tensors (whose `.to` path cannot swap tensors): replace floating
    parameters and buffers in place, keeping shared (tied) tensors shared."""
    memo: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(old) -> (old kept alive, new)
    for mod in module.modules():
        for table, make in ((mod._parameters, lambda t: nn.Parameter(t.detach().to(dtype), requires_grad=False)),
                            (mod._buffers, lambda t: t.to(dtype))):
            for name, t in list(table.items()):
                if t is None or not t.is_floating_point() or t.dtype == dtype:
                    continue
                if id(t) not in memo:
                    memo[id(t)] = (t, make(t))
                table[name] = memo[id(t)][1]
    return module.eval().requires_grad_(False)


def reduced(comp: Component, keep: int = KEEP_LAYERS) -> tuple[Component, int]:
    """The component with `keep` of its repeated layers, and how many it lost (0: built as it is)."""
    rule = REPEATED_LAYERS.get(comp.class_name)
    if rule is None:
        return comp, 0
    key = rule[0]
    cfg = comp.config
    full = cfg.get(key) if isinstance(cfg, dict) else getattr(cfg, key, None)
    if not isinstance(full, int) or full <= keep:
        return comp, 0
    if isinstance(cfg, dict):
        cfg = dict(cfg, **{key: keep})
    else:
        cfg = type(cfg)(**dict(cfg.to_dict(), **{key: keep}))
    return Component(comp.library, comp.class_name, cfg), full - keep


def _layer_list(mod: nn.Module, path: str):
    for part in path.split("."):
        mod = getattr(mod, part)
    return mod


def build_modules(comps: dict[str, Component], adapter, dtype: torch.dtype, reduce: bool = True,
                  keep: int = KEEP_LAYERS) -> dict[str, Any]:
    """text_encoder, image_encoder, vae (those the pipeline has) and the denoiser as the adapter builds it,
    cast to `dtype`; `_extra_params`: bytes of the layers left out, by component; `_repeated`: by component,
    (the layers built, how many the real model has), so the work counted on the built ones can be scaled."""
    mods: dict[str, Any] = {}
    extra: dict[str, int] = {}
    repeated: dict[str, tuple[list[nn.Module], int]] = {}
    mods["_extra_params"] = extra
    mods["_repeated"] = repeated
    missing: dict[int, tuple[nn.Module, int, str]] = {}   # id -> (module, layers left out, its layer list)

    def build(comp: Component) -> nn.Module:
        lost = 0
        if reduce:
            comp, lost = reduced(comp, keep)
        mod = build_module(comp)
        if lost:
            missing[id(mod)] = (mod, lost, REPEATED_LAYERS[comp.class_name][1])
        return mod

    def finish(name: str, mod: nn.Module) -> nn.Module:
        mod = cast_(mod, dtype)
        if id(mod) in missing:
            _, lost, path = missing[id(mod)]
            layers = list(_layer_list(mod, path))
            extra[name] = lost * module_bytes([layers[-1]])
            repeated[name] = (layers, len(layers) + lost)
        return mod

    for name in ("text_encoder", "image_encoder", "vae"):
        if name in comps:
            mods[name] = finish(name, build(comps[name]))
    den_name = adapter.denoiser_attr
    if den_name not in comps:
        raise VidrtError(f"model.path: the pipeline has no {den_name} component")
    mods["denoiser"] = finish(den_name, adapter.build_simulated_denoiser(comps, build))
    expert = adapter.spec.second_expert   # a second expert (Wan 2.2 A14B): built as the first is, never run
    if expert in comps:
        mods[expert] = finish(expert, build(comps[expert]))
    return mods
