"""The dtypes a config may name, and their torch types (torch is imported only when a type is asked for)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from vidrt.core.errors import VidrtError

if TYPE_CHECKING:
    import torch

DTYPE_NAMES = ("float32", "float16", "bfloat16")


def torch_dtype(name: str, key: str = "model.dtype") -> torch.dtype:
    import torch

    if name not in DTYPE_NAMES:
        raise VidrtError(f"{key}: {name!r} is not one of {', '.join(DTYPE_NAMES)}")
    return getattr(torch, name)
