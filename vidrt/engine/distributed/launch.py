"""`devices: [cuda:0, cuda:1]` (or `--set devices=[cuda:0,cuda:1]`) without torchrun: re-run the same command
under torchrun, one rank per listed device.

The CLI calls `relaunch_if_needed(cfg.devices, sys.argv[1:])` after loading the config; a non-None result is
the exit code of the torchrun it started.
"""
from __future__ import annotations

import os
import subprocess
import sys

from vidrt.core.errors import VidrtError


def launch_plan(devices: list[str]) -> tuple[int, dict[str, str]] | None:
    """(ranks, extra environment) for a device list naming several devices; None for one device."""
    if len(devices) <= 1 or int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        return None
    if any(d in ("auto", "cuda") for d in devices):
        raise VidrtError(f"devices: {devices} — list explicit devices (cuda:0, cuda:1, ...) for a multi-GPU run")
    kinds = {d.split(":")[0] for d in devices}
    if len(kinds) > 1:
        raise VidrtError(f"devices: {devices} mixes CPU and CUDA devices")
    if kinds == {"cpu"}:
        return len(devices), {"VIDRT_DIST_BACKEND": "gloo"}
    indices = [d.split(":", 1)[1] for d in devices]
    if len(set(indices)) != len(indices):
        raise VidrtError(f"devices: {devices} lists a GPU twice (one rank per GPU)")
    # rank r sees only its listed GPU as cuda:r (CUDA_VISIBLE_DEVICES keeps the listed order)
    return len(devices), {"CUDA_VISIBLE_DEVICES": ",".join(indices)}


def relaunch_if_needed(devices: list[str], argv: list[str]) -> int | None:
    """Run `python -m vidrt <argv>` under torchrun with one rank per device and return its exit code;
    None when this process should render itself (one device, or already a torchrun rank)."""
    plan = launch_plan(devices)
    if plan is None:
        return None
    ranks, env = plan
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks),
           "-m", "vidrt", *argv]
    return subprocess.call(cmd, env={**os.environ, **env})
