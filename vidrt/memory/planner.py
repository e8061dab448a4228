"""The budget planner: `vidrt.plan(config, budget="8GiB") -> Plan`.

One simulated session (see simulate.run_session) measures the denoise stage under every candidate slicing
setting and the decode stage with and without VAE tiling; parameter placement (offload none | model | group,
text encoder on the accelerator or the CPU) is then accounted for analytically. Among the combinations whose
simulated accelerator peak fits the budget, the one with the lowest cost wins. The cost model is deliberately
simple — relative slowdowns, not seconds:

* slicing: 0.02 per halving (candidates: unsliced, then 1/2 .. 1/16 of the axis) of the chunk (more, smaller chunks launch more kernels)
* offload: model 0.05 (whole models move at stage boundaries), group 0.5 (weights stream every step)
* text encoder on the CPU: 0.15 (a T5-XXL forward on CPU takes many seconds)
* VAE tiling: 0.1 (overlapping tiles are decoded twice at the seams)

If nothing fits, a VidrtError says how much the smallest plan needs.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from vidrt.core.errors import VidrtError
from vidrt.core.units import parse_bytes
from vidrt.memory.simulate import MemorySettings, _account, run_session
from vidrt.core.units import format_bytes
from vidrt.memory.report import stage_table

OFFLOAD_COST = {"none": 0.0, "model": 0.05, "group": 0.5, "shard": 0.15}   # shard: all-gather per block per call
TEXT_ENCODER_COST = {"accelerator": 0.0, "cpu": 0.15}
TILING_COST = 0.1
SLICE_COST = 0.02


@dataclass
class Plan:
    settings: MemorySettings
    peak_bytes: int
    host_peak_bytes: int
    budget_bytes: int
    cost: float
    stages: list[dict[str, Any]]
    smallest_peak_bytes: int
    considered: int
    model: str = ""
    seconds: float = 0.0
    alternatives: list[dict[str, Any]] = field(default_factory=list)
    gpus: int = 1

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.budget_bytes

    def memory_config(self) -> dict[str, Any]:
        """The chosen settings in the config's `memory` shape (plus `text_encoder`)."""
        s = self.settings
        slicing: Any = "off"
        if s.slicing:
            slicing = {"frames": s.chunk_frames, "tokens": s.chunk_tokens, "positions": s.chunk_positions}
        return {"budget": format_bytes(self.budget_bytes).replace(" ", ""), "slicing": slicing,
                "offload": s.offload, "vae_tiling": "on" if s.vae_tiling else "off",
                "text_encoder": s.text_encoder}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["settings"] = self.settings.to_dict()
        d["memory"] = self.memory_config()
        d["fits"] = self.fits
        return d

    def table(self):
        return stage_table(self.stages, [], peak_bytes=self.peak_bytes, host_peak_bytes=self.host_peak_bytes,
                           title=f"plan for {format_bytes(self.budget_bytes)}: {self.settings.describe()}")

    def __str__(self) -> str:
        per = f" per GPU of {self.gpus}" if self.gpus > 1 else ""
        return (f"fits in {format_bytes(self.budget_bytes)}{per}: predicted peak {format_bytes(self.peak_bytes)} "
                f"(host {format_bytes(self.host_peak_bytes)}) with {self.settings.describe()}")


def _gib(n: int) -> str:
    v = n / 2**30
    return f"{v:.2f}" if v >= 0.1 else f"{v:.3g}"


def _ceil_div(a: int, b: int) -> int:
    return max(1, -(-a // b))


def slicing_candidates(config, family: str, frames: int, height: int, width: int) -> list[MemorySettings]:
    """Unsliced, then chunks of 1/2 .. 1/32 of the sliced axis."""
    cands = [MemorySettings(slicing=False)]
    try:
        import vidrt.engine.slicing  # noqa: F401
    except ImportError:
        return cands
    if family == "wan":
        tf = (frames - 1) // 4 + 1
        n_tokens = tf * (height // 16) * (width // 16)
        for div in (2, 4, 8, 16):
            cands.append(MemorySettings(slicing=True, chunk_tokens=_ceil_div(n_tokens, div)))
    else:
        batch = 2 if float(getattr(config, "guidance", 5.0)) > 1.0 else 1
        samples = batch * frames
        positions = (height // 8) * (width // 8)
        for div in (2, 4, 8, 16):
            cands.append(MemorySettings(slicing=True, chunk_frames=_ceil_div(samples, div),
                                        chunk_positions=_ceil_div(positions, div)))
    return cands


def _slice_cost(index: int) -> float:
    return SLICE_COST * index  # candidate i halves the chunk i times


def _rename(stages: list[dict], denoise_i: int | None, decode_j: int | None) -> list[dict]:
    out = []
    for s in stages:
        name = s["name"]
        base, _, idx = name.partition("#")
        if idx:
            want = denoise_i if base == "denoise" else decode_j
            if int(idx) != want:
                continue
        out.append(dict(s, name=base))
    return out


_SESSIONS: dict[tuple, Any] = {}  # one simulated session serves every budget for the same run


def plan(config, budget: Any = None, *, pipe=None, keep_alternatives: int = 5, gpus: int = 1) -> Plan:
    """The fastest memory settings whose simulated accelerator peak fits `budget` (default:
    `config.memory.budget`). `gpus` > 1: the per-GPU peak of a torchrun over that many GPUs (the layout
    vidrt.engine.distributed chooses), with weights replicated or sharded over the ranks (offload "shard")."""
    started = time.perf_counter()
    if budget is None:
        budget = getattr(getattr(config, "memory", None), "budget", None)
        if budget is None:
            raise VidrtError("memory.budget: no budget given (set memory.budget or pass --budget, e.g. 8GiB)")
    budget_bytes = parse_bytes(budget, "budget" if budget is not None else "memory.budget")
    from vidrt.models import get_adapter

    adapter = get_adapter(config.model.family)
    frames = int(getattr(config, "frames", None) or adapter.spec.native_frame_count(config.model.path))
    slicings = slicing_candidates(config, adapter.family, frames, int(config.height), int(config.width))
    tilings = [False, True]
    key = (id(pipe) if pipe is not None else str(config.model.path), adapter.family, str(config.model.dtype),
           getattr(config.model, "motion_adapter", None), frames, int(config.height), int(config.width),
           float(getattr(config, "guidance", 5.0)) > 1.0, bool(getattr(config, "image", None)),
           tuple(getattr(config, "devices", None) or ["auto"]), gpus)
    sess = _SESSIONS.get(key, (None, None))[1]
    if sess is None:
        sess = run_session(config, slicings, tilings, pipe=pipe, track_modules=False, fast=True, ranks=gpus)
        if len(_SESSIONS) >= 8:
            _SESSIONS.pop(next(iter(_SESSIONS)))
        _SESSIONS[key] = (pipe, sess)  # holding the pipe keeps its id from being reused

    # A text encoder kept on the CPU is only offered where the config can say so (memory.text_encoder);
    # the runner otherwise encodes on the accelerator and releases the encoder afterwards.
    te_options = ("accelerator", "cpu") if hasattr(getattr(config, "memory", None), "text_encoder") \
        else ("accelerator",)
    combos = []
    for i, sl in enumerate(slicings):
        for j, tiled in enumerate(tilings):
            raw = _rename(sess.stages, i if len(slicings) > 1 else None, j)
            for offload in ("none", "model", "group") + (("shard",) if gpus > 1 else ()):
                for te in te_options:
                    st = MemorySettings(slicing=sl.slicing, chunk_frames=sl.chunk_frames,
                                        chunk_tokens=sl.chunk_tokens, chunk_positions=sl.chunk_positions,
                                        offload=offload, text_encoder=te, vae_tiling=tiled)
                    stages, peak, host = _account(raw, sess.params, sess.group, st, sess.device, sess.shard)
                    cost = (1.0 + _slice_cost(i) + OFFLOAD_COST[offload] + TEXT_ENCODER_COST[te]
                            + (TILING_COST if tiled else 0.0))
                    combos.append((cost, peak, host, st, stages))
    smallest = min(c[1] for c in combos)
    fitting = sorted((c for c in combos if c[1] <= budget_bytes), key=lambda c: (c[0], c[1]))
    if not fitting:
        raise VidrtError(f"cannot fit: the smallest plan needs {_gib(smallest)} GiB "
                         f"(budget {_gib(budget_bytes)} GiB) for {config.model.path} "
                         f"{frames}x{config.height}x{config.width}")
    cost, peak, host, st, stages = fitting[0]
    alternatives = [{"settings": c[3].to_dict(), "peak_bytes": c[1], "host_peak_bytes": c[2], "cost": round(c[0], 3)}
                    for c in fitting[1:1 + keep_alternatives]]
    return Plan(settings=st, peak_bytes=int(peak), host_peak_bytes=int(host), budget_bytes=budget_bytes,
                cost=round(cost, 3), stages=stages, smallest_peak_bytes=int(smallest), considered=len(combos),
                model=str(config.model.path), seconds=round(time.perf_counter() - started, 2),
                alternatives=alternatives, gpus=gpus)
