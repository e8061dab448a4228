"""Where weights live: text-encoder placement and weight streaming of the denoiser.

- `release_text_encoder(pipe, device)`: after the prompts are encoded the text encoder (UMT5-XXL is
  10.6 GiB in bf16) is not needed on the accelerator; move it to the CPU (or delete it).
- `enable_offload(pipe, OffloadConfig("group", device))`: the denoiser streams its weights through diffusers' group
  offloading (a CUDA stream prefetches the next group when the accelerator is CUDA): block by block when it
  is a stack of many small blocks (a DiT), layer by layer otherwise (a UNet, where one up block holds a
  quarter of the weights; see `offload_granularity`); the text/image encoders stream leaf by leaf; the VAE
  sits on the device.
- `OffloadConfig("model", device)`: diffusers' model CPU offload (whole models move on use).
- "none": everything on the device. ("shard", weights split over torchrun ranks, is vidrt.engine.distributed's.)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vidrt.core.errors import VidrtError
from vidrt.core.tensors import module_bytes
from vidrt.engine.attach import STREAMING_HOOKS
from vidrt.models import denoisers_of
from vidrt.models.layout import stream_units

OFFLOAD_MODES = ("none", "model", "group", "shard")   # shard: FSDP2 over torchrun ranks (vidrt.engine.distributed)
_ENCODERS = ("text_encoder", "text_encoder_2", "image_encoder")

BLOCK_SHARE_MAX = 1 / 8  # block-level streaming keeps two blocks resident: fine while each is a small share


@dataclass(frozen=True)
class OffloadConfig:
    """mode: none | model | group | shard (see the module docstring);
    device: the accelerator weights are streamed to (None: the CPU, where offloading is a no-op);
    granularity: for "group": "auto" (block level when every outermost block is small, see
        `offload_granularity`), "block" or "leaf";
    disk_path: for "group": stream the denoiser's weights from safetensors files in this folder instead of
        pinned host memory (for machines whose RAM cannot hold the weights; diffusers writes the files when
        each group first leaves the accelerator and reads a group's file on every use). The encoders stream
        from host memory: diffusers' disk path writes a tensor shared by two groups (UMT5's tied token
        embedding) after the first group emptied it, so their output would be wrong. The folder must be
        empty (diffusers reuses any file of the same group name, whatever weights it holds).
    On CUDA the weights of the next group are copied on a side stream while the current group runs (pinned
    host memory, `record_stream` so no synchronisation is needed to free them)."""

    mode: str = "none"
    device: str | None = None
    granularity: str = "auto"
    disk_path: str | None = None
    keep_on_host: tuple[str, ...] = ()    # components that stay in host memory (a text encoder run on the CPU)

    def __post_init__(self):
        if self.mode not in OFFLOAD_MODES:
            raise VidrtError(f"memory.offload: expected one of {', '.join(OFFLOAD_MODES)}, got {self.mode!r}")
        if self.granularity not in ("auto", "block", "leaf"):
            raise VidrtError(f"memory.offload granularity: expected auto, block or leaf, got {self.granularity!r}")


def offload_granularity(module: nn.Module, total_bytes: int | None = None) -> str:
    """"block_level" when every outermost block is at most 1/8 of the weights (Wan: 30-40 blocks of 1/31),
    else "leaf_level". Block level keeps the running and the prefetched block on the accelerator; SD1.5's
    UNet has an up block of 0.6 GiB (fp16) and its mid block is no block at all, so two blocks in flight
    cost more than the sliced activations; there each layer streams alone. `total_bytes`: the full model's
    weight bytes when `module` is a reduced copy (the simulator drops repeated layers)."""
    blocks = stream_units(module)
    if not blocks:
        return "leaf_level"
    total = total_bytes if total_bytes is not None else module_bytes([module])
    largest = max(module_bytes([b]) for b in blocks)
    return "block_level" if total and largest <= BLOCK_SHARE_MAX * total else "leaf_level"


def _device(device) -> torch.device:
    return torch.device(device) if device is not None else torch.device("cpu")


def _has_hooks(module: nn.Module) -> bool:
    if hasattr(module, "_hf_hook"):
        return True
    for sub in module.modules():
        reg = getattr(sub, "_diffusers_hook", None)
        if reg is not None and reg.hooks:
            return True
    return False


def release_text_encoder(pipe, device=None, *, delete: bool = False) -> dict[str, Any]:
    """Move the pipeline's text encoder(s) off the accelerator after prompt encoding (or delete them).

    Safe to call on any pipeline: on a CPU run, or when an offload mode already manages the encoder
    (its hooks move it), nothing moves. Returns {"text_encoder": "cpu"|"deleted"|"unchanged", ...}."""
    dev = _device(device)
    info: dict[str, Any] = {}
    for name in ("text_encoder", "text_encoder_2"):
        module = getattr(pipe, name, None)
        if not isinstance(module, nn.Module):
            continue
        if delete:
            setattr(pipe, name, None)
            if hasattr(pipe, "register_to_config"):
                pipe.register_to_config(**{name: (None, None)})
            info[name] = "deleted"
        elif dev.type == "cpu" or _has_hooks(module):
            info[name] = "unchanged"
        else:
            module.to("cpu")
            info[name] = "cpu"
    if dev.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
    return info


def enable_offload(pipe, config: OffloadConfig = OffloadConfig()) -> dict[str, Any]:
    """Apply an offload mode to a diffusers pipeline. Returns a JSON-able summary."""
    mode = config.mode
    dev = _device(config.device)
    info: dict[str, Any] = {"offload": mode}
    if mode == "none":
        return info
    if mode == "shard":
        info["note"] = "weights sharded over the ranks by vidrt.engine.distributed (FSDP2)"
        return info
    if mode == "model":
        if dev.type == "cpu":
            info["note"] = "model offload is a no-op on the CPU"
            return info
        pipe.enable_model_cpu_offload(device=dev)
        return info

    from diffusers.hooks import apply_group_offloading

    use_stream = dev.type == "cuda" and torch.cuda.is_available()
    streaming = {"use_stream": use_stream, "record_stream": use_stream}
    disk = {}
    if config.disk_path is not None:
        folder = Path(config.disk_path)
        if folder.exists() and any(folder.iterdir()):
            raise VidrtError(f"memory.offload_disk: {folder} is not empty; diffusers would reuse its files as "
                             "this model's weights; give an empty or new folder")
        disk["offload_to_disk_path"] = str(folder)
    streamed, granularity = [], {}
    for den in denoisers_of(pipe):
        kind = offload_granularity(den) if config.granularity == "auto" else f"{config.granularity}_level"
        apply_group_offloading(den, onload_device=dev, offload_device=torch.device("cpu"), offload_type=kind,
                               num_blocks_per_group=1 if kind == "block_level" else None, **streaming, **disk)
        streamed.append(type(den).__name__)
        granularity[type(den).__name__] = kind
    for name in _ENCODERS:
        module = getattr(pipe, name, None)
        if isinstance(module, nn.Module) and not _has_hooks(module) and name not in config.keep_on_host:
            apply_group_offloading(module, onload_device=dev, offload_device=torch.device("cpu"),
                                   offload_type="leaf_level", **streaming)
            streamed.append(name)
    vae = getattr(pipe, "vae", None)
    if isinstance(vae, nn.Module):
        vae.to(dev)
    info.update({"streamed": streamed, "use_stream": use_stream, "offload_type": granularity})
    if config.disk_path is not None:
        info["disk_path"] = str(config.disk_path)
    return info


def disable_offload(pipe) -> None:
    """Remove the group-offloading hooks (and diffusers' model-offload hooks) from every component."""
    from diffusers.hooks import HookRegistry

    for name, module in list(getattr(pipe, "components", {}).items()):
        if not isinstance(module, nn.Module):
            continue
        for sub in module.modules():
            reg = getattr(sub, "_diffusers_hook", None)
            if isinstance(reg, HookRegistry):
                for hook in STREAMING_HOOKS:
                    if hook in reg.hooks:
                        reg.remove_hook(hook, recurse=False)
    if hasattr(pipe, "remove_all_hooks"):
        try:
            pipe.remove_all_hooks()
        except Exception:  # noqa: BLE001 - nothing to remove
            pass
