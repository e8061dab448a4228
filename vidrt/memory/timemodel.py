"""Seconds from counted work: `predict_seconds(counts, device, efficiency)`.

Why: plans should be chosen by predicted wall time, not by guessed costs. The counts (vidrt.memory.cost)
keep every op signature's (FLOPs, bytes) with how often it ran, so each op gets a roofline time on the
device (vidrt.memory.devices) and the efficiencies below, fitted to measured GPU runs
(bench/fit_time_model.py -> bench/results/time_model.json), absorb what peak rates do not say.

Per op:      matmul / conv / attention: max(flops / (peak(dtype) x eff), bytes / (bandwidth x eff_memory))
             everything else:           bytes / (bandwidth x eff_memory)
Launches:    eager PyTorch issues ops one by one, launch_overhead_s each, while the device runs what was
             issued before. An op shorter than that leaves the device waiting: per section the launch-bound
             excess is B = sum max(0, L - t). Ops longer than L let the host run ahead by A = sum max(0, t - L),
             which hides later launches: launch time = B - launch_hiding x min(A, B). launch_hiding 0 = every
             op takes max(t, L); 1 = the section takes max(sum t, launches x L) (perfect queueing). Sections
             marked serial (the host waits on the device after every few ops, as diffusers' group offloading
             does after each group) pay L on top of every op.
Host ops:    ops on the host side of a run (tensors kept on the host, e.g. tiles blended there): bytes /
             host_memory_gbs + launch_overhead_s each.
Transfers:   bytes / (host link x eff_transfer) + transfer_latency_s per copy; a side stream hides up to
             `overlap` x compute of it: section = compute + max(0, transfer - overlap x compute).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from .cost import Counts          # sibling modules only: this trio moves together
from .devices import GpuSpec, get_device

_CONV = ("convolution", "_convolution", "cudnn_convolution", "convolution_overrideable", "_slow_conv2d_forward",
         "mkldnn_convolution", "conv2d", "conv3d")


@dataclass(frozen=True)
class Efficiency:
    """Fractions of datasheet peaks that eager PyTorch reaches, and fixed costs. Defaults are the fit to the
    project's H100/H200 measurements, rounded (bench/results/time_model.json, which `load_efficiency()` reads);
    fitted on two Hopper GPUs only, so other parts (GeForce, Ampere) are extrapolations."""

    eff_matmul: float = 0.55          # of dense tensor peak, GEMMs (mm/addmm/bmm/baddbmm)
    eff_conv: float = 0.20            # of dense tensor peak, cuDNN convolutions (VAE conv3d, UNet conv2d)
    eff_attention: float = 0.61       # of dense tensor peak, fused SDPA (flash / efficient / cuDNN)
    eff_memory: float = 0.81          # of DRAM bandwidth, any op's memory-bound side
    launch_overhead_s: float = 27.5e-6  # host time per eager op: Python, dispatcher, module hooks, launch
    launch_hiding: float = 0.57       # 0..1: how much device-bound time hides later launches (see above)
    eff_transfer: float = 0.49        # of the nominal host link (one direction)
    transfer_latency_s: float = 212e-6  # per copy (group offloading: hook, pinned-copy launch, stream sync)
    overlap: float = 0.50             # fraction of compute time a streamed copy can hide under
    host_memory_gbs: float = 10.0     # host-side tensor ops (tiles blended in host memory), GB/s; not fitted

    def __post_init__(self):
        for f in ("eff_matmul", "eff_conv", "eff_attention", "eff_memory", "eff_transfer"):
            v = getattr(self, f)
            if not 0 < v <= 1:
                raise ValueError(f"Efficiency.{f} must be in (0, 1], got {v}")
        for f in ("overlap", "launch_hiding"):
            if not 0 <= getattr(self, f) <= 1:
                raise ValueError(f"Efficiency.{f} must be in [0, 1], got {getattr(self, f)}")
        if self.launch_overhead_s < 0 or self.transfer_latency_s < 0 or self.host_memory_gbs <= 0:
            raise ValueError("Efficiency: launch_overhead_s, transfer_latency_s >= 0 and host_memory_gbs > 0")

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Efficiency":
        names = {f.name for f in fields(cls)}
        return cls(**{k: float(v) for k, v in d.items() if k in names})

    def with_(self, **kw) -> "Efficiency":
        return replace(self, **kw)


def load_efficiency(path: str | Path | None = None) -> Efficiency:
    """The fitted constants from bench/results/time_model.json (or `path`); defaults when absent."""
    p = Path(path) if path is not None else Path(__file__).resolve().parents[2] / "bench/results/time_model.json"
    try:
        return Efficiency.from_dict(json.loads(p.read_text())["efficiency"])
    except (OSError, KeyError, ValueError):
        return Efficiency()


def _op_name(sig: str) -> str:
    return sig.split("|", 1)[0].split(".", 1)[0]


def _zero() -> dict[str, float]:
    return {"matmul": 0.0, "attention": 0.0, "elementwise": 0.0, "host": 0.0, "launch": 0.0, "compute": 0.0,
            "transfer": 0.0, "total": 0.0}


def predict_seconds(counts: Counts, device: GpuSpec | str, efficiency: Efficiency | None = None) -> dict[str, dict]:
    """{section: {matmul, attention, elementwise, host, launch, compute, transfer, total}} in seconds, plus
    "total" summed over sections. A section's numbers exclude its subsections (they are listed apart).
    `launch` is the time the device waits for the host (see the module docstring)."""
    dev = get_device(device) if isinstance(device, str) else device
    eff = efficiency or Efficiency()
    bw = dev.mem_gbs * 1e9 * eff.eff_memory
    link = dev.host_gbs * 1e9 * eff.eff_transfer
    peaks: dict[str, float] = {}
    out: dict[str, dict] = {}
    for section in counts.sections():
        r = _zero()
        serial = section in counts.serial
        lead = excess = 0.0     # A and B of the module docstring
        for sig, (cat, n, flops, nbytes, dtype) in counts.ops.get(section, {}).items():
            if cat == "host":
                r["host"] += n * (nbytes / (eff.host_memory_gbs * 1e9) + eff.launch_overhead_s)
                continue
            t_mem = nbytes / bw
            if cat in ("matmul", "attention") and flops:
                if dtype not in peaks:
                    peaks[dtype] = dev.peak_flops(dtype)
                e = eff.eff_attention if cat == "attention" else (
                    eff.eff_conv if _op_name(sig) in _CONV else eff.eff_matmul)
                t = max(flops / (peaks[dtype] * e), t_mem)
            else:
                t = t_mem
            r[cat if cat in r else "elementwise"] += n * t
            if serial:
                excess += n * eff.launch_overhead_s
            else:
                excess += n * max(0.0, eff.launch_overhead_s - t)
                lead += n * max(0.0, t - eff.launch_overhead_s)
        r["launch"] = excess - (0.0 if serial else eff.launch_hiding * min(lead, excess))
        r["compute"] = r["matmul"] + r["attention"] + r["elementwise"] + r["host"] + r["launch"]
        moved = counts.transfers.get(section, {}).values()
        r["transfer"] = sum(b for b, _ in moved) / link + sum(c for _, c in moved) * eff.transfer_latency_s
        r["total"] = r["compute"] + max(0.0, r["transfer"] - eff.overlap * r["compute"])
        out[section] = r
    total = _zero()
    for r in out.values():
        for k in total:
            total[k] += r[k]
    out["total"] = total
    return out


def rollup(pred: dict[str, dict], level: int = 1) -> dict[str, dict]:
    """Sum a prediction's sections to their first `level` path components ("denoise/blocks" -> "denoise")."""
    out: dict[str, dict] = {}
    for name, r in pred.items():
        if name == "total":
            continue
        key = "/".join(name.split("/")[:level])
        acc = out.setdefault(key, _zero())
        for k in acc:
            acc[k] += r[k]
    out["total"] = dict(pred["total"])
    return out
