"""Per-step checkpoints of a render, and resuming from them.

After every denoising step the latents, the scheduler's state, the generator's RNG state and any step
policy's state go atomically to `out/x.ckpt/state.pt` (`out/x.mp4` -> `out/x.ckpt/`). A resumed render
continues from the last complete step and yields the same frames as an uninterrupted one: the pipeline gets
the saved latents, its scheduler is restored to the saved state, and the loop starts at the next timestep.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vidrt.core.errors import VidrtError

FORMAT = 1
# Keys of the config that change the result; output path, memory layout and devices do not.
RESULT_KEYS = ("model", "prompt", "negative_prompt", "image", "frames", "height", "width", "steps",
               "guidance", "seed", "acceleration", "long")


def checkpoint_dir(video_path: str | Path) -> Path:
    return Path(video_path).with_suffix(".ckpt")


def fingerprint(config: dict[str, Any]) -> str:
    relevant = {k: config.get(k) for k in RESULT_KEYS}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _pack(value: Any) -> Any:
    """Scheduler state -> types `torch.load(weights_only=True)` accepts (numpy arrays become tensors)."""
    if isinstance(value, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(value))}
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, (list, tuple)):
        packed = [_pack(v) for v in value]
        return packed if isinstance(value, list) else {"__tuple__": packed}
    if isinstance(value, dict):
        return {k: _pack(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    raise TypeError(type(value).__name__)


def _unpack(value: Any, device: torch.device | None = None) -> Any:
    if isinstance(value, dict):
        if "__ndarray__" in value:
            return value["__ndarray__"].numpy()
        if "__tuple__" in value:
            return tuple(_unpack(v, device) for v in value["__tuple__"])
        return {k: _unpack(v, device) for k, v in value.items()}
    if isinstance(value, list):
        return [_unpack(v, device) for v in value]
    if isinstance(value, torch.Tensor) and device is not None:
        return value.to(device)
    return value


def scheduler_state(scheduler) -> dict[str, Any]:
    state = {}
    for key, value in vars(scheduler).items():
        if key in ("config", "_internal_dict"):
            continue
        try:
            state[key] = _pack(value)
        except TypeError:
            continue  # helpers / callables are rebuilt by set_timesteps
    return state


@dataclass
class Checkpoint:
    step: int                     # number of completed denoising steps
    total_steps: int
    latents: torch.Tensor
    scheduler: dict[str, Any]
    generator: torch.Tensor | None
    policy: Any
    fingerprint: str


class StepCheckpointer:
    """Writes and reads the checkpoint folder of one output."""

    def __init__(self, video_path: str | Path, config: dict[str, Any]):
        self.folder = checkpoint_dir(video_path)
        self.fingerprint = fingerprint(config)
        self.file = self.folder / "state.pt"

    def save(self, step: int, total_steps: int, latents: torch.Tensor, scheduler, generator=None,
             policy_state: Any = None) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": FORMAT, "fingerprint": self.fingerprint, "step": step, "total_steps": total_steps,
            "latents": latents.detach().cpu().clone(), "scheduler": scheduler_state(scheduler),
            "generator": generator.get_state() if generator is not None else None,
            "policy": _pack(policy_state) if policy_state is not None else None,
        }
        tmp = self.folder / f".state.pt.{os.getpid()}.tmp"
        torch.save(payload, tmp)
        os.replace(tmp, self.file)  # atomic: a kill leaves the previous complete step

    def load(self) -> Checkpoint:
        if not self.file.is_file():
            raise VidrtError(f"--resume: no checkpoint at {self.folder} (nothing to resume)")
        try:
            data = torch.load(self.file, map_location="cpu", weights_only=True)
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError("unknown format")
            ckpt = Checkpoint(step=int(data["step"]), total_steps=int(data["total_steps"]),
                              latents=data["latents"], scheduler=data["scheduler"], generator=data["generator"],
                              policy=data["policy"], fingerprint=data["fingerprint"])
        except Exception as exc:
            raise VidrtError(f"--resume: checkpoint {self.file} is corrupt ({type(exc).__name__}); "
                             f"delete {self.folder} and render again") from None
        if ckpt.fingerprint != self.fingerprint:
            raise VidrtError(f"--resume: checkpoint {self.folder} was made by another config (prompt, seed, size, "
                             "steps or model differ); delete it or render without --resume")
        return ckpt

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def restore_scheduler(scheduler, state: dict[str, Any], device: torch.device) -> None:
    for key, value in _unpack(state, device).items():
        setattr(scheduler, key, value)
