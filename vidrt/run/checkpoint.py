"""Per-step checkpoints of a render, and resuming from them.

After every denoising step the latents, the scheduler's state, the generator's RNG state and any step
policy's state go atomically to `out/x.ckpt/state.pt` (`out/x.mp4` -> `out/x.ckpt/`). A resumed render
continues from the last complete step and yields the same frames as an uninterrupted one: the pipeline gets
the saved latents, its scheduler is restored to the saved state, and the loop starts at the next timestep.

Checkpoints are device-independent: every tensor is saved on the CPU, and the generator's state is saved with the
kind of generator that made it (a CPU Mersenne Twister or a CUDA Philox state), so a render checkpointed on one
device resumes on another with a generator of the saved kind (`restore_generator`). A checkpoint names what
made it - the config keys that change the result and the model's weights (file sizes and safetensors headers) -
and a resume with anything else says which of them differs.
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
from vidrt.models.loading import single_file_identity, weights_identity
from vidrt.run.video import checkpoint_dir

FORMAT = 2
# Keys of the config that change the result; output path, memory layout and devices do not.
RESULT_KEYS = ("model", "prompt", "negative_prompt", "image", "frames", "height", "width", "steps",
               "guidance", "seed", "acceleration", "long")

__all__ = ["Checkpoint", "StepCheckpointer", "checkpoint_dir", "fingerprint", "identity", "restore_generator",
           "restore_scheduler"]


def _absolute(path: Any) -> Any:
    """A local file or folder as an absolute path (the same checkpoint from any working directory)."""
    return os.path.abspath(path) if isinstance(path, str) and path and Path(path).exists() else path


def identity(config: dict[str, Any]) -> dict[str, Any]:
    """What made a render's result: its result keys and the weights of its model (and motion adapter) folder and
    single weights files (model.weights, model.weights_2: a file rewritten in place is other weights); for a
    video-to-video render also its strength and the input clip (path, size and content digest: a clip rewritten in
    place is another input). Identities keep no key a render does not use, so checkpoints resume across versions
    that added them."""
    relevant = {k: config.get(k) for k in RESULT_KEYS}
    model = config.get("model") or {}
    relevant["model"] = {**model, **{k: _absolute(model.get(k)) for k in ("path", "motion_adapter", "weights",
                                                                           "weights_2") if k in model}}
    relevant["image"] = _absolute(config.get("image"))
    relevant["weights"] = weights_identity(model["path"]) if model.get("path") else None
    files = {k: single_file_identity(model[k]) for k in ("weights", "weights_2") if model.get(k)}
    if files:
        relevant["single_file_weights"] = files
    if model.get("motion_adapter"):
        relevant["motion_adapter_weights"] = weights_identity(model["motion_adapter"])
    if config.get("input_video"):
        relevant["input_video"] = {"path": _absolute(config["input_video"]), **file_identity(config["input_video"])}
        relevant["strength"] = config.get("strength")
    return relevant


def file_identity(path: str) -> dict[str, Any]:
    """A file's size and sha256 (read in 1 MiB pieces), or what kept it from being read."""
    try:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for piece in iter(lambda: f.read(1 << 20), b""):
                digest.update(piece)
        return {"bytes": os.path.getsize(path), "sha256": digest.hexdigest()}
    except OSError as exc:
        return {"unreadable": type(exc).__name__}


def fingerprint(config: dict[str, Any]) -> str:
    return _digest(identity(config))


def _digest(ident: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        return {k: v for key, sub in value.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): value}


def differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """'key: checkpoint X, now Y' for each result key that differs (weight files named by their path)."""
    found = []
    for top in sorted(set(saved) | set(now)):
        a, b = _flat(saved.get(top), f"{top}."), _flat(now.get(top), f"{top}.")
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                if top.endswith("weights"):
                    found.append(f"{top} ({key.removeprefix(top + '.') or 'folder'} differs)")
                    break
                found.append(f"{key}: checkpoint {a.get(key)!r}, now {b.get(key)!r}")
    return found


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
    generator: dict[str, Any] | None  # {"device": "cpu" | "cuda", "state": CPU uint8 tensor}
    policy: Any
    fingerprint: str


def generator_state(generator: torch.Generator | None) -> dict[str, Any] | None:
    """A generator's state as saved: a CPU uint8 tensor (also for CUDA generators) and the kind that made it."""
    if generator is None:
        return None
    return {"device": torch.device(generator.device).type, "state": generator.get_state().cpu().clone()}


def restore_generator(generator: torch.Generator | None, saved: dict[str, Any] | None,
                      warn=None) -> torch.Generator | None:
    """The generator a resumed render continues with: `generator` with the saved state when it is of the saved
    kind; otherwise a new generator of the saved kind (a CPU state resumed on CUDA keeps drawing from a CPU
    generator, which diffusers accepts for any device); `generator` unchanged when nothing was saved or no
    generator of that kind exists here (a CUDA state resumed without CUDA: `warn` says so)."""
    if generator is None or saved is None:
        return generator
    kind, state = saved["device"], saved["state"]
    if torch.device(generator.device).type == kind:
        generator.set_state(state)
        return generator
    if kind == "cuda" and not torch.cuda.is_available():
        if warn is not None:
            warn("resume: the random state was saved on CUDA and cannot be restored on this machine; a stochastic "
                 "scheduler's noise after the resume step will differ")
        return generator
    other = torch.Generator(device=kind)
    other.set_state(state)
    return other


class StepCheckpointer:
    """Writes and reads the checkpoint folder of one output."""

    def __init__(self, video_path: str | Path, config: dict[str, Any]):
        self.folder = checkpoint_dir(video_path)
        self.identity = identity(config)
        self.fingerprint = _digest(self.identity)
        self.file = self.folder / "state.pt"

    def save(self, step: int, total_steps: int, latents: torch.Tensor, scheduler, generator=None,
             policy_state: Any = None) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": FORMAT, "fingerprint": self.fingerprint, "identity": json.dumps(self.identity, default=str),
            "step": step, "total_steps": total_steps,
            "latents": latents.detach().cpu().clone(), "scheduler": scheduler_state(scheduler),
            "generator": generator_state(generator),
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
            if not isinstance(data, dict) or data.get("format") not in (1, FORMAT):
                raise ValueError("unknown format")
            saved_gen = data["generator"]
            if isinstance(saved_gen, torch.Tensor):   # format 1: the state alone, from a CPU or CUDA generator
                saved_gen = {"device": "cpu" if saved_gen.numel() > 16 else "cuda", "state": saved_gen}
            ckpt = Checkpoint(step=int(data["step"]), total_steps=int(data["total_steps"]),
                              latents=data["latents"], scheduler=data["scheduler"], generator=saved_gen,
                              policy=data["policy"], fingerprint=data["fingerprint"])
            saved_identity = json.loads(data["identity"]) if data.get("identity") else None
        except Exception as exc:
            raise VidrtError(f"--resume: checkpoint {self.file} is corrupt ({type(exc).__name__}); "
                             f"delete {self.folder} and render again") from None
        if ckpt.fingerprint != self.fingerprint:
            now = json.loads(json.dumps(self.identity, default=str))
            diff = differences(saved_identity, now) if saved_identity is not None else []
            what = "; ".join(diff[:3]) + (f"; and {len(diff) - 3} more" if len(diff) > 3 else "") if diff else \
                "prompt, seed, size, steps or model differ"
            raise VidrtError(f"--resume: checkpoint {self.folder} was made by another config ({what}); render with "
                             "the config that made it, or delete the folder and render without --resume")
        return ckpt

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def restore_scheduler(scheduler, state: dict[str, Any], device: torch.device) -> None:
    for key, value in _unpack(state, device).items():
        setattr(scheduler, key, value)
