"""Model families. Each is an adapter (see base.py); this module maps family names to adapters."""
from __future__ import annotations

from vidrt.core.errors import VidrtError
from vidrt.models.animatediff import AnimateDiffAdapter
from vidrt.models.base import ModelAdapter, ModuleRoles, RenderRequest
from vidrt.models.i2vgen import I2VGenXLAdapter
from vidrt.models.wan import WanAdapter

ADAPTERS: dict[str, ModelAdapter] = {a.family: a for a in (WanAdapter(), AnimateDiffAdapter(), I2VGenXLAdapter())}


def get_adapter(family: str) -> ModelAdapter:
    try:
        return ADAPTERS[family]
    except KeyError:
        raise VidrtError(f"model.family: unknown family {family!r}; known: {', '.join(ADAPTERS)}") from None


def family_of_class(class_name: str) -> str | None:
    for adapter in ADAPTERS.values():
        if class_name in adapter.pipeline_class_names:
            return adapter.family
    return None


def adapter_for(obj) -> ModelAdapter:
    """The adapter of a pipeline or bare denoiser, decided by its classes (works on user-built pipelines)."""
    from diffusers import DiffusionPipeline

    if isinstance(obj, DiffusionPipeline):
        fam = family_of_class(type(obj).__name__)
        if fam:
            return ADAPTERS[fam]
        raise VidrtError(f"unsupported pipeline class {type(obj).__name__}")
    name = type(obj).__name__
    denoisers = {"WanTransformer3DModel": "wan", "UNetMotionModel": "animatediff", "I2VGenXLUNet": "i2vgen-xl"}
    for cls in type(obj).__mro__:   # (wrappers such as FSDP2's FSDPWanTransformer3DModel subclass the model)
        if cls.__name__ in denoisers:
            return ADAPTERS[denoisers[cls.__name__]]
    raise VidrtError(f"unsupported model class {name}")


__all__ = ["ADAPTERS", "ModelAdapter", "ModuleRoles", "RenderRequest", "adapter_for", "family_of_class",
           "get_adapter"]


def load(family: str, path: str, dtype=None, device: str = "cpu", *, image: bool = False,
         allow_pickle: bool = False, motion_adapter: str | None = None):
    """Load a real diffusers pipeline of `family` from a local folder or hub id (safetensors only unless
    `allow_pickle`). `image=True` picks the image-to-video pipeline where a family has both."""
    import torch

    adapter = get_adapter(family)
    kwargs = {"motion_adapter": motion_adapter} if motion_adapter else {}
    return adapter.load(path, dtype or torch.float32, device, with_image=image, allow_pickle=allow_pickle, **kwargs)
