"""A render's memory settings put on its pipeline: the config's `memory:` keys, with those left at "auto" chosen
by the planner for the budget (the fastest predicted plan that fits), composed from the engine's verbs
(slicing, VAE settings, text-encoder placement, offload, attention kernel, regional compilation)."""
from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from vidrt.config import RenderConfig
from vidrt.core.errors import VidrtError
from vidrt.core.tensors import module_bytes
from vidrt.engine.attention import set_attention
from vidrt.engine.compile import enable_compile
from vidrt.engine.offload import OffloadConfig, enable_offload
from vidrt.engine.slicing import SlicingConfig, disable_slicing, enable_slicing
from vidrt.engine.vae import VaeConfig, enable_vae_settings
from vidrt.engine.weights import WeightStorageConfig, enable_weight_storage, weight_storage_on
from vidrt.memory.planner import Plan, plan
from vidrt.memory.settings import MemorySettings, fixed_settings, settings_from_config
from vidrt.models import denoisers_of

AUTO_KEYS = ("slicing", "offload", "vae_tiling", "text_encoder", "weights")


def apply_settings(pipe, settings: MemorySettings, device: torch.device, height: int, width: int,
                   kernels: str = "torch", disk_folder: Path | None = None) -> dict[str, Any]:
    """Slicing, the VAE, the text encoder's place, the weights' storage, then offload (offload hooks wrap the
    sliced computation; group offloading copies the weights as they are stored when it is applied);
    returns what was applied, JSON-able (the sidecar's `memory`). `disk_folder`: an empty folder for offload
    group from disk (settings.disk)."""
    applied: dict[str, Any] = {}
    if not settings.slicing:
        disable_slicing(pipe)
        applied["slicing"] = "off"
    else:
        summary = enable_slicing(pipe, SlicingConfig(settings.chunk_frames, settings.chunk_tokens,
                                                     settings.chunk_positions, kernels=kernels,
                                                     accelerator=device.type != "cpu"))
        applied["slicing"] = {
            "frames": summary["chunk_frames"] if summary["chunk_frames"] is not None else "auto",
            "tokens": summary["chunk_tokens"] if summary["chunk_tokens"] is not None else "auto",
            "positions": summary["chunk_positions"] if summary["chunk_positions"] is not None else "auto",
            "patched_modules": summary["patched"],
        }
        if kernels != "torch":
            applied["slicing"]["kernels"] = kernels
    applied["vae"] = enable_vae_settings(pipe, VaeConfig("on" if settings.vae_tiling else "off", height, width))
    host = ()
    if settings.text_encoder == "cpu" and device.type != "cpu" and getattr(pipe, "text_encoder", None) is not None:
        pipe.text_encoder.to("cpu")          # it encodes on the host and never touches the accelerator
        host = ("text_encoder",)
    applied["text_encoder"] = settings.text_encoder
    applied["weights"] = _store_weights(pipe, settings.weights, device)
    if settings.disk and disk_folder is None:
        raise VidrtError("memory.offload_disk: offload from disk needs a folder for the weight files")
    applied["offload"] = enable_offload(pipe, OffloadConfig(
        settings.offload, str(device), settings.granularity, keep_on_host=host,
        disk_path=str(disk_folder) if settings.disk and settings.offload == "group" else None))
    return applied


def _store_weights(pipe, weights: str, device: torch.device) -> Any:
    """The denoiser's weights stored as the settings say, summarised for the sidecar. fp8 storage is one-way:
    a pipeline whose weights are already stored keeps them, whatever the settings."""
    if any(weight_storage_on(d) for d in denoisers_of(pipe)):
        return "already stored in fp8 (one-way)"
    if weights == "native":
        return "native"
    if weights == "gguf":      # quantized when loaded (model.weights): what the denoiser holds now
        return {"storage": "gguf", "bytes": sum(module_bytes([d]) for d in denoisers_of(pipe))}
    summary = enable_weight_storage(pipe, WeightStorageConfig(weights, non_blocking=device.type == "cuda"))
    return {"storage": summary["storage"], "bytes_before": summary["bytes_before"],
            "bytes_after": summary["bytes_after"],
            "layers_cast": sum(m["layers_cast"] for m in summary["models"].values())}


def disk_folder_for(pipe, cfg: RenderConfig, settings: MemorySettings, output: Path) -> Path | None:
    """A fresh folder for the offload files of `pipe` (None unless the settings stream from disk): inside
    memory.offload_disk's folder, or beside the output; a fresh one each time, as diffusers would take files
    of the same group name for this model's weights. The files live as long as the pipeline (its hooks read
    them on every use) and go with it, or at exit."""
    if not settings.disk:
        return None
    base = Path(cfg.memory.disk_folder() or output.parent)
    try:
        base.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f".{output.stem}.offload-", dir=base))
    except OSError as exc:
        raise VidrtError(f"memory.offload_disk: cannot make a folder in {base} ({exc.strerror or exc})") from None
    weakref.finalize(pipe, shutil.rmtree, str(folder), True)
    return folder


def choose_settings(pipe, cfg: RenderConfig, device: torch.device, gpus: int = 1) -> tuple[MemorySettings, Plan | None]:
    """The settings of this run: the config's, with its "auto" keys planned for the budget. No planning where
    there is no device limit (a CPU run with budget auto, or budget null) or nothing is left to decide."""
    fixed = fixed_settings(cfg)
    budget = cfg.memory.budget
    undecided = [k for k in AUTO_KEYS if k not in fixed]
    no_limit = budget is None or (str(budget).strip().lower() == "auto" and device.type == "cpu")
    if not undecided or no_limit:
        return settings_from_config(cfg), None
    # planned for the device this run has (a dry run of the same config plans for an accelerator)
    chosen = plan(cfg.model_copy(update={"devices": [str(device)]}), budget, pipe=pipe, gpus=gpus)
    return chosen.settings, chosen


def apply_memory(pipe, cfg: RenderConfig, device: torch.device, log: Console, height: int, width: int,
                 gpus: int = 1, output: Path | None = None) -> tuple[dict[str, Any], MemorySettings]:
    """Choose and apply this run's memory settings (per GPU of `gpus` under torchrun, where the planner may
    shard the weights: offload "shard"). Returns what was applied and the settings."""
    settings, chosen = choose_settings(pipe, cfg, device, gpus)
    if chosen is not None:
        log.print(f"plan: {chosen}")
    folder = disk_folder_for(pipe, cfg, settings, Path(output or cfg.output.path))
    applied = apply_settings(pipe, settings, device, height, width, cfg.memory.kernels, folder)
    if folder is not None:
        applied["offload_folder"] = str(folder)
    applied["attention"] = set_attention(pipe, cfg.memory.attention, device)
    if cfg.memory.compile:
        applied["compiled_blocks"] = enable_compile(pipe)
    if chosen is not None:
        planned = chosen.to_dict()
        applied["plan"] = {"peak_bytes": planned["peak_bytes"], "budget_bytes": planned["budget_bytes"],
                           "predicted_seconds": planned["predicted_seconds"], "gpu": planned["gpu"],
                           "memory": planned["memory"]}
    return applied, settings
