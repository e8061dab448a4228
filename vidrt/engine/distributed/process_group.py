"""Joining and leaving the torchrun process group, and guarding a distributed render so that a failure on one
rank stops every rank at once instead of a hang."""
from __future__ import annotations

import contextlib
import datetime
import os
from typing import Any

import torch
import torch.distributed as dist

from vidrt.core.errors import VidrtError
from vidrt.engine.distributed.api import disable_distributed
from vidrt.engine.distributed.comm import Context


def setup_from_env(timeout_s: float | None = None, device_type: str | None = None) -> Context | None:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

    None for a plain single-process run (no WORLD_SIZE, or WORLD_SIZE=1). gloo on CPU, NCCL when CUDA is
    available; each rank uses cuda:LOCAL_RANK. `VIDRT_DIST_TIMEOUT` (seconds, default 600) bounds how long
    a rank waits in a collective for a peer before it fails with a DistributedError. `device_type="cpu"`
    (a config asking for the CPU) or VIDRT_DIST_BACKEND=gloo forces gloo on CPU even where CUDA exists.
    """
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return None
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    cuda = (torch.cuda.is_available() and os.environ.get("VIDRT_DIST_BACKEND", "") != "gloo"
            and device_type != "cpu")
    if cuda:
        if local >= torch.cuda.device_count():
            raise VidrtError(f"devices: rank {rank} needs cuda:{local} but only {torch.cuda.device_count()} "
                             "GPU(s) are visible")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    backend = "nccl" if cuda else "gloo"
    timeout = datetime.timedelta(seconds=float(timeout_s or os.environ.get("VIDRT_DIST_TIMEOUT", 600)))
    owns = False
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"backend": backend, "rank": rank, "world_size": world, "timeout": timeout}
        if cuda:
            kwargs["device_id"] = device
        dist.init_process_group(**kwargs)
        owns = True
    return Context(rank=rank, world=world, device=device, backend=dist.get_backend(), owns_process_group=owns)


def context_from_group() -> Context:
    """A Context for an already initialised default process group (tests, library use)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    backend = dist.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    return Context(rank=rank, world=world, device=device, backend=backend)


def shutdown(ctx: Context | None, failed: bool = False) -> None:
    """Leave the process group this module created. After a failure, abort it (closing the connections
    makes peers blocked in a collective fail at once instead of waiting for the timeout)."""
    if ctx is None or not ctx.owns_process_group or not dist.is_initialized():
        return
    try:
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - best effort at exit
        pass


@contextlib.contextmanager
def guard(ctx: Context | None, pipe=None, adapter=None):
    """Around a distributed render: on success or failure remove the hooks and leave the process group;
    leaving it on failure closes this rank's connections, so peers blocked in a collective raise a
    DistributedError at once (instead of hanging until the timeout)."""
    if ctx is None:
        yield
        return
    failed = True
    try:
        yield
        failed = False
    finally:
        if pipe is not None:
            disable_distributed(pipe, adapter)
        shutdown(ctx, failed=failed)
