"""Multi-process helpers for tests and benchmarks: run a function on N local ranks (gloo on CPU) and
collect what each rank returns or raises. Importable by spawned children (unlike a test module)."""
from __future__ import annotations

import os
import pickle
import socket
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable

import torch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(rank: int, world: int, port: int, fn: Callable, args: tuple, out_dir: str, env: dict) -> None:
    os.environ.update(env)
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "VIDRT_DIST_BACKEND": "gloo"})
    torch.set_num_threads(1)
    import vidrt.engine.distributed as vd

    ctx = vd.setup_from_env()
    result: dict[str, Any]
    try:
        result = {"ok": True, "value": fn(ctx, *args)}
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        result = {"ok": False, "type": type(exc).__name__, "message": str(exc), "tb": traceback.format_exc()}
    Path(out_dir, f"rank{rank}.pkl").write_bytes(pickle.dumps(result))
    vd.shutdown(ctx, failed=not result["ok"])
    os._exit(0 if result["ok"] else 1)   # skip slow interpreter teardown


def run_ranks(fn: Callable, world: int = 2, *args, timeout: float = 300, env: dict | None = None) -> list[dict]:
    """Run `fn(ctx, *args)` on `world` spawned ranks; returns per rank {"ok", "value"} or {"ok": False, ...}.
    A rank that neither returns nor raises within `timeout` is killed and reported as {"ok": False, "type": "hung"}."""
    import torch.multiprocessing as mp

    env = {"VIDRT_DIST_TIMEOUT": "60", "OMP_NUM_THREADS": "1", **(env or {})}
    mpctx = mp.get_context("spawn")
    port = free_port()
    with tempfile.TemporaryDirectory() as out_dir:
        procs = [mpctx.Process(target=_child, args=(r, world, port, fn, args, out_dir, env)) for r in range(world)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout)
        results = []
        for r, p in enumerate(procs):
            if p.is_alive():
                p.kill()
                p.join()
            f = Path(out_dir, f"rank{r}.pkl")
            results.append(pickle.loads(f.read_bytes()) if f.exists()
                           else {"ok": False, "type": "hung" if p.exitcode is None or p.exitcode < 0 else "died",
                                 "message": f"exit code {p.exitcode}"})
        return results


# ---- workloads used by tests/test_distributed.py and bench/distributed.py ----------------------------

def wan_tiny_call_inputs(seed: int = 0, frames: int = 3, height: int = 10, width: int = 14):
    """A tiny Wan denoiser and one call's inputs (odd token count: 3 x 5 x 7 = 105 tokens)."""
    from vidrt.models import get_adapter

    adapter = get_adapter("wan")
    pipe = adapter.tiny(seed)
    den = adapter.denoiser(pipe)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(1, 16, frames, height, width, generator=g)
    ehs = torch.randn(1, 16, 32, generator=g)
    t = torch.tensor([500.0])
    return adapter, pipe, den, dict(hidden_states=x, timestep=t, encoder_hidden_states=ehs, return_dict=False)


def pipeline_latents(pipe, adapter, guidance: float, steps: int = 2, frames: int | None = None, size: int = 32,
                     image=None):
    from vidrt.models.base import RenderRequest

    frames = frames or (5 if adapter.spec.frame_rule == "4k+1" else 4)
    req = RenderRequest(prompt="a red circle moves left", negative_prompt="", frames=frames, height=size,
                        width=size, steps=steps, guidance=guidance, seed=0, image=image)
    embeds = adapter.encode_prompt(pipe, req)
    with torch.no_grad():
        return pipe(**embeds, **adapter.call_kwargs(pipe, req), generator=adapter.generator(req, "cpu"),
                    output_type="latent").frames
