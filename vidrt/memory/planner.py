"""The budget planner: `vidrt.plan(config, budget="8GiB", gpu="rtx4090") -> Plan`, the fastest settings that fit.

One simulated session (simulate.session.run_session) measures the denoise stage under every candidate slicing
(unsliced, then 1/2 .. 1/16 of each axis the adapter's slicer chunks: the largest chunks first) and the decode
with and without VAE tiling, and counts each variant's work. Every combination with an offload mode (none,
model, group at block or leaf level, shard over several GPUs) and a text-encoder placement (accelerator, CPU)
is then placed analytically (simulate.placement: the accelerator and host peaks) and priced
(vidrt.memory.pricing: predicted seconds on the GPU model). The fastest combination whose accelerator peak
fits the budget and whose host peak fits the host budget wins; ties go to the smaller peak. Offload group
from disk (the weights streamed from files, not held in host memory) is a candidate too: slower, chosen
where host memory would not hold the weights. So is fp8 weight storage (half the denoiser's bytes resident and
streamed); because it changes the video (lossy), `memory.weights: auto` takes it only where no candidate with
native weights fits, and the table shows what it would have saved.

A budget of "auto" is the accelerator's free memory less a headroom (cuDNN/cuBLAS workspaces and the
allocator's fragmentation, which the simulation does not see); planning for a named GPU model without one at
hand, its memory less the headroom; on a CPU-only run there is no device limit.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from vidrt.core.errors import VidrtError
from vidrt.core.units import GiB, format_bytes, parse_bytes
from vidrt.memory.devices import GpuSpec
from vidrt.memory.pricing import price, run_shape
from vidrt.memory.report import byte_unit, scaled, stage_table
from vidrt.memory.settings import MemorySettings, fixed_settings
from vidrt.memory.simulate.session import frame_count, run_session
from vidrt.memory.target import auto_budget, host_budget_bytes, resolve_gpu
from vidrt.memory.timemodel import load_efficiency
from vidrt.models import get_adapter



def fits(peak: int, host_peak: int, budget: int | None, host_budget: int | None) -> bool:
    """Whether peaks fit the budgets (None: no limit)."""
    return (budget is None or peak <= budget) and (host_budget is None or host_peak <= host_budget)


@dataclass
class Plan:
    settings: MemorySettings
    peak_bytes: int
    host_peak_bytes: int
    budget_bytes: int | None            # None: no device limit
    predicted_seconds: dict[str, float]  # per stage, "denoise_step" and "total", on `gpu`
    stages: list[dict[str, Any]]
    smallest_peak_bytes: int
    considered: int
    gpu: str
    model: str = ""
    planning_seconds: float = 0.0
    candidates: list[dict[str, Any]] = field(default_factory=list)   # every combination, fastest first
    gpus: int = 1
    host_budget_bytes: int | None = None   # None: no host limit

    @property
    def fits(self) -> bool:
        return fits(self.peak_bytes, self.host_peak_bytes, self.budget_bytes, self.host_budget_bytes)

    def memory_config(self) -> dict[str, Any]:
        """The chosen settings as a config's `memory:` block (which a config accepts as it is)."""
        return memory_block(self.settings, self.budget_bytes)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["settings"] = self.settings.to_dict()
        d["memory"] = self.memory_config()
        d["fits"] = self.fits
        return d

    def table(self):
        budget = format_bytes(self.budget_bytes) if self.budget_bytes is not None else "no device limit"
        return stage_table(self.stages, [], peak_bytes=self.peak_bytes, host_peak_bytes=self.host_peak_bytes,
                           title=f"plan for {budget} on {self.gpu}: {self.settings.describe()}")

    def candidates_table(self):
        """Every combination considered: settings, predicted peak and seconds; the chosen one marked."""
        from rich.table import Table

        unit, size = byte_unit(max(max(r["peak_bytes"], r["host_peak_bytes"]) for r in self.candidates))
        table = Table(title=f"candidates, fastest first (seconds predicted on {self.gpu}"
                            f"{f', per GPU of {self.gpus}' if self.gpus > 1 else ''})")
        for col in ("", "slicing", "offload", "tiling", "text enc.", "weights", f"peak {unit}", f"host {unit}",
                    "seconds", "fits"):
            table.add_column(col, justify="left" if col in ("", "slicing", "offload", "text enc.", "weights")
                             else "right",
                             no_wrap=True)
        for row in self.candidates:
            s = MemorySettings(**row["settings"])
            chosen = s == self.settings
            table.add_row("->" if chosen else "", _slicing_text(s), _offload_text(s), "on" if s.vae_tiling else "off",
                          "accel." if s.text_encoder == "accelerator" else s.text_encoder, s.weights,
                          scaled(row["peak_bytes"], size), scaled(row["host_peak_bytes"], size),
                          f"{row['seconds']['total']:.1f}", "yes" if row["fits"] else "no",
                          style="bold" if chosen else None)
        return table

    def __str__(self) -> str:
        per = f" per GPU of {self.gpus}" if self.gpus > 1 else ""
        budget = f"fits in {format_bytes(self.budget_bytes)}{per}" if self.budget_bytes is not None else \
            "no device limit"
        return (f"{budget}: predicted peak {format_bytes(self.peak_bytes)} (host {format_bytes(self.host_peak_bytes)}), "
                f"{self.predicted_seconds['total']:.1f} s on {self.gpu} "
                f"({self.predicted_seconds['denoise_step']:.2f} s per step) with {self.settings.describe()}")


def _slicing_text(s: MemorySettings) -> str:
    if not s.slicing:
        return "off"
    return ", ".join(f"{k}={getattr(s, 'chunk_' + k)}" for k in ("frames", "tokens", "positions")
                     if getattr(s, "chunk_" + k) is not None) or "auto"


def _offload_text(s: MemorySettings) -> str:
    if s.offload != "group":
        return s.offload
    return "group" + (f"/{s.granularity}" if s.granularity != "auto" else "") + ("/disk" if s.disk else "")


def memory_block(s: MemorySettings, budget_bytes: int | None) -> dict[str, Any]:
    """Settings in the config's `memory:` shape."""
    slicing: Any = "off"
    if s.slicing:
        slicing = {k: getattr(s, "chunk_" + k) for k in ("frames", "tokens", "positions")
                   if getattr(s, "chunk_" + k) is not None} or "auto"
    block = {"budget": format_bytes(budget_bytes).replace(" ", "") if budget_bytes is not None else None,
             "slicing": slicing, "offload": s.offload, "vae_tiling": "on" if s.vae_tiling else "off",
             "text_encoder": s.text_encoder, "weights": s.weights}
    if s.offload == "group":
        block["offload_granularity"] = s.granularity
        block["offload_disk"] = "on" if s.disk else "off"
    return block


def budget_bytes_of(config, budget: Any, gpu) -> int | None:
    if budget is None:
        budget = getattr(getattr(config, "memory", None), "budget", None)
    if budget is None:
        raise VidrtError("memory.budget: no budget given (set memory.budget or pass --budget, e.g. 8GiB or auto)")
    if isinstance(budget, str) and budget.strip().lower() == "auto":
        return auto_budget(config, gpu)
    return parse_bytes(budget, "budget")


def _ceil_div(a: int, b: int) -> int:
    return max(1, -(-a // b))


def slicing_candidates(config, adapter, frames: int, height: int, width: int) -> list[MemorySettings]:
    """Unsliced, then chunks of 1/2 .. 1/16 of each axis the adapter's slicer chunks."""
    batch = 2 if float(getattr(config, "guidance", 5.0)) > 1.0 else 1
    axes = adapter.slicing_axes(frames, height, width, batch)
    cands = [MemorySettings(slicing=False)]
    for div in (2, 4, 8, 16):
        chunks = {f"chunk_{axis}": _ceil_div(n, div) for axis, n in axes.items()}
        cands.append(MemorySettings(slicing=True, **chunks))
    return cands


def _variant(stages: list[dict], denoise_i: int | None, decode_j: int | None) -> list[dict]:
    out = []
    for s in stages:
        base, _, idx = s["name"].partition("#")
        if idx:
            want = denoise_i if base == "denoise" else decode_j
            if int(idx) != want:
                continue
        out.append(dict(s, name=base))
    return out


_SESSIONS: dict[tuple, Any] = {}  # one simulated session serves every budget and GPU for the same run


def _session(config, adapter, frames, slicings, tilings, pipe, gpus):
    key = (id(pipe) if pipe is not None else str(config.model.path), adapter.family, str(config.model.dtype),
           getattr(config.model, "motion_adapter", None), frames, int(config.height), int(config.width),
           float(getattr(config, "guidance", 5.0)) > 1.0, bool(getattr(config, "image", None)),
           tuple(getattr(config, "devices", None) or ["auto"]), gpus)
    key += (tuple(map(repr, slicings)), tuple(tilings))
    sess = _SESSIONS.get(key, (None, None))[1]
    if sess is None:
        sess = run_session(config, slicings, tilings, pipe=pipe, track_modules=False, fast=True, ranks=gpus)
        if len(_SESSIONS) >= 8:
            _SESSIONS.pop(next(iter(_SESSIONS)))
        _SESSIONS[key] = (pipe, sess)  # holding the pipe keeps its id from being reused
    return sess


def _candidate(sess, st: MemorySettings, raw, denoise: str, decode: str, shape, spec, eff, den: str,
               budget_bytes: int | None, host_bytes: int | None, order: int) -> dict[str, Any]:
    """One combination placed and priced: its stages, peaks, predicted seconds and whether it fits."""
    stages, peak, host = sess.place(st, raw)
    seconds = price(sess, st, denoise, decode, shape, spec, eff, den)
    for s in stages:
        s["predicted_seconds"] = round(seconds.get(s["name"], 0.0), 3)
    return {"settings": st.to_dict(), "peak_bytes": int(peak), "host_peak_bytes": int(host),
            "seconds": {k: round(v, 3) for k, v in seconds.items()},
            "fits": fits(peak, host, budget_bytes, host_bytes),
            "_stages": stages, "_key": (seconds["total"], order, peak)}


def plan(config, budget: Any = None, *, pipe=None, gpus: int = 1, gpu: str | GpuSpec | None = None,
         host_budget: Any = None) -> Plan:
    """The fastest memory settings whose simulated accelerator peak fits `budget` (default:
    `config.memory.budget`; "auto": see the module docstring) and whose host peak fits `host_budget`
    (default: `config.memory.host_budget`; auto: this machine's), priced on `gpu` (a model id of
    vidrt.memory.devices; default: the GPU present, else DEFAULT_GPU). `gpus` > 1: per GPU of a torchrun
    over that many GPUs, with weights replicated or sharded over the ranks (offload "shard")."""
    started = time.perf_counter()
    spec = resolve_gpu(gpu)
    budget_bytes = budget_bytes_of(config, budget, gpu)
    host_bytes = host_budget_bytes(config, host_budget)
    adapter = get_adapter(config.model.family)
    frames = frame_count(config, adapter)
    fixed = fixed_settings(config)            # what the config does not leave to the planner
    if "slicing" in fixed:
        chunks = {k: fixed.get(k) for k in ("chunk_frames", "chunk_tokens", "chunk_positions")}
        slicings = [MemorySettings(slicing=fixed["slicing"], **chunks)]
    else:
        slicings = slicing_candidates(config, adapter, frames, int(config.height), int(config.width))
    tilings = [fixed["vae_tiling"]] if "vae_tiling" in fixed else [False, True]
    sess = _session(config, adapter, frames, slicings, tilings, pipe, gpus)
    shape = run_shape(config, adapter, frames, sess.windows, pipe)
    eff = load_efficiency()
    den = adapter.denoiser_attr
    offloads = [("none", "auto", False), ("model", "auto", False), ("group", "block", False),
                ("group", "leaf", False), ("group", "block", True), ("group", "leaf", True)]
    if gpus > 1:
        offloads.append(("shard", "auto", False))
    if "offload" in fixed:
        offloads = [o for o in offloads if o[0] == fixed["offload"]] or [(fixed["offload"], "auto", False)]
    if "disk" in fixed:
        offloads = [o for o in offloads if o[2] == fixed["disk"]]
    if "granularity" in fixed:
        offloads = [(o, fixed["granularity"] if o == "group" else g, d) for o, g, d in offloads]
        offloads = list(dict.fromkeys(offloads))
    encoders = [fixed["text_encoder"]] if "text_encoder" in fixed else \
        ["accelerator"] if sess.device == "cpu" else ["accelerator", "cpu"]   # (on a CPU run both are the host)
    storages = [fixed["weights"]] if "weights" in fixed else ["native", "fp8"] if gpus == 1 else ["native"]
    rows = []
    for i, sl in enumerate(slicings):
        for j, tiled in enumerate(tilings):
            raw = _variant(sess.stages, i, j)
            # the session names a stage's variants `stage#i`, a stage with one variant plainly
            denoise = f"denoise#{i}" if len(slicings) > 1 else "denoise"
            decode = f"vae_decode#{j}" if len(tilings) > 1 else "vae_decode"
            for offload, granularity, disk in offloads:
                for te in encoders if offload != "model" else ["accelerator"]:   # (model offload moves it)
                    for weights in storages if offload != "shard" else [w for w in storages if w == "native"]:
                        st = MemorySettings(slicing=sl.slicing, chunk_frames=sl.chunk_frames,
                                            chunk_tokens=sl.chunk_tokens, chunk_positions=sl.chunk_positions,
                                            offload=offload, text_encoder=te, vae_tiling=tiled,
                                            granularity=granularity, disk=disk, weights=weights)
                        rows.append(_candidate(sess, st, raw, denoise, decode, shape, spec, eff, den,
                                               budget_bytes, host_bytes, len(rows)))
    # fastest first; equal predictions keep the candidates' order (larger chunks, less offloading first)
    rows.sort(key=lambda r: r["_key"])
    smallest = min(r["peak_bytes"] for r in rows)
    fitting = [r for r in rows if r["fits"]]
    if not fitting:
        what = f"{config.model.path} {frames}x{config.height}x{config.width}"
        in_device = [r for r in rows if budget_bytes is None or r["peak_bytes"] <= budget_bytes]
        if in_device and host_bytes is not None:
            least = min(r["host_peak_bytes"] for r in in_device)
            raise VidrtError(f"cannot fit: the plans that fit the device budget need at least {least / GiB:.2f} GiB "
                             f"of host memory (memory.host_budget {host_bytes / GiB:.2f} GiB) for {what}; allow "
                             "memory.offload_disk, free host memory or raise memory.host_budget")
        raise VidrtError(f"cannot fit: the smallest plan needs {smallest / GiB:.2f} GiB "
                         f"(budget {budget_bytes / GiB:.2f} GiB) for {what}")
    # fp8 storage changes the video: left to auto, it is taken only where nothing with native weights fits
    exact = [r for r in fitting if r["settings"]["weights"] == "native"] if "weights" not in fixed else fitting
    best = (exact or fitting)[0]
    return Plan(settings=MemorySettings(**best["settings"]), peak_bytes=best["peak_bytes"],
                host_peak_bytes=best["host_peak_bytes"], budget_bytes=budget_bytes, predicted_seconds=best["seconds"],
                stages=best["_stages"], smallest_peak_bytes=int(smallest), considered=len(rows), gpu=spec.id,
                model=str(config.model.path), planning_seconds=round(time.perf_counter() - started, 2),
                candidates=[{k: v for k, v in r.items() if not k.startswith("_")} for r in rows], gpus=gpus,
                host_budget_bytes=host_bytes)
