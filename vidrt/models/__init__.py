"""Model families. Each is an adapter that owns every per-family fact: its static requirements (specs.py, light:
no torch) and how to load, run, decode and simulate it (wan.py, animatediff.py, i2vgen.py, imported on first
use). This module finds the adapter of a family name, a pipeline or a bare denoiser."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from vidrt.core.errors import VidrtError
from vidrt.models.specs import SPECS, FamilySpec, family_of_class, get_spec

if TYPE_CHECKING:
    from torch import nn

    from vidrt.models.base import ModelAdapter


def get_adapter(family: str) -> ModelAdapter:
    """The family's adapter (its module, which imports torch and diffusers, loads on first use)."""
    return importlib.import_module(get_spec(family).adapter).ADAPTER


def adapter_for(obj) -> ModelAdapter:
    """The adapter of a pipeline or bare denoiser, decided by its classes (works on user-built pipelines)."""
    from diffusers import DiffusionPipeline

    if isinstance(obj, DiffusionPipeline):
        fam = family_of_class(type(obj).__name__)
        if fam:
            return get_adapter(fam)
        raise VidrtError(f"unsupported pipeline class {type(obj).__name__}")
    for cls in type(obj).__mro__:   # (wrappers such as FSDP2's FSDPWanTransformer3DModel subclass the model)
        for spec in SPECS.values():
            if cls.__name__ in spec.denoiser_class_names:
                return get_adapter(spec.family)
    raise VidrtError(f"unsupported model class {type(obj).__name__}")


def denoisers_of(obj) -> list[nn.Module]:
    """The denoiser(s) of a pipeline (Wan 2.2 has two), or [obj] for a bare denoiser."""
    from diffusers import DiffusionPipeline
    from torch import nn

    if isinstance(obj, DiffusionPipeline):
        adapter = adapter_for(obj)
        found = [adapter.denoiser(obj)]
        extra = getattr(obj, adapter.spec.second_expert or "", None)
        if isinstance(extra, nn.Module):
            found.append(extra)
        return [d for d in found if d is not None]
    if isinstance(obj, nn.Module):
        adapter_for(obj)  # raises a clear error for unsupported models
        return [obj]
    raise TypeError(f"expected a diffusers pipeline or a denoiser module, got {type(obj).__name__}")


def load(family: str, path: str, dtype=None, device: str = "cpu", *, image: bool = False,
         allow_pickle: bool = False, motion_adapter: str | None = None, weights: str | None = None,
         weights_2: str | None = None):
    """Load a real diffusers pipeline of `family` from a local folder or hub id (safetensors only unless
    `allow_pickle`). `image=True` picks the image-to-video pipeline where a family has both. `weights`: a single
    .gguf / .safetensors file holding the denoiser (vidrt.models.single_file); `weights_2`: the second expert's
    (Wan 2.2 A14B's transformer_2)."""
    import torch

    adapter = get_adapter(family)
    kwargs = {"motion_adapter": motion_adapter} if motion_adapter else {}
    if weights is not None:
        kwargs["weights"] = weights
    if weights_2 is not None:
        kwargs["weights_2"] = weights_2
    return adapter.load(path, dtype or torch.float32, device, with_image=image, allow_pickle=allow_pickle, **kwargs)


__all__ = ["SPECS", "FamilySpec", "adapter_for", "denoisers_of", "family_of_class", "get_adapter", "get_spec", "load"]
