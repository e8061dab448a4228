"""How a denoiser's blocks are laid out, read from its structure (never from a model's name).

Three views of one layout, each used by one part of the engine:
- `outermost(module, types)`: submodules of the given classes, outermost first (the adapters' slicing roles);
- `call_order(denoiser)`: the top-level blocks in the order a forward calls them (step policies decide between
  them): a DiT's `blocks`, a UNet's down blocks, mid block and up blocks;
- `stream_units(module)`: the blocks diffusers' block-level group offloading streams one at a time (and FSDP
  shards): the elements of the module's direct ModuleList / Sequential children.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from vidrt.core.errors import VidrtError


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


@dataclass
class CallOrder:
    """The denoiser's top-level blocks in call order."""

    kind: str                       # "dit" or "unet"
    blocks: list[nn.Module]
    names: list[str]

    @property
    def n(self) -> int:
        return len(self.blocks)


def call_order(denoiser: nn.Module) -> CallOrder:
    blocks = getattr(denoiser, "blocks", None) or getattr(denoiser, "transformer_blocks", None)
    if isinstance(blocks, nn.ModuleList) and len(blocks):
        attr = "blocks" if getattr(denoiser, "blocks", None) is blocks else "transformer_blocks"
        return CallOrder("dit", list(blocks), [f"{attr}.{i}" for i in range(len(blocks))])
    down, up = getattr(denoiser, "down_blocks", None), getattr(denoiser, "up_blocks", None)
    if isinstance(down, nn.ModuleList) and isinstance(up, nn.ModuleList) and len(down) and len(up):
        mods = list(down)
        names = [f"down_blocks.{i}" for i in range(len(down))]
        mid = getattr(denoiser, "mid_block", None)
        if isinstance(mid, nn.Module):
            mods.append(mid)
            names.append("mid_block")
        mods += list(up)
        names += [f"up_blocks.{i}" for i in range(len(up))]
        return CallOrder("unet", mods, names)
    raise VidrtError(f"policy: cannot find the blocks of {type(denoiser).__name__} (no blocks / down_blocks+up_blocks)")


def stream_units(module: nn.Module) -> list[nn.Module]:
    return [b for child in module.children() if isinstance(child, (nn.ModuleList, nn.Sequential)) for b in child]
