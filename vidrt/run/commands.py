"""`vidrt profile` and `vidrt plan` as plain functions (the typer CLI wraps them).

profile_command(config, dry_run, json_path, plot_path) -> dict
    Prints a table (stage, peak, params, activations, top modules), optionally writes the JSON report
    (top-level peak_bytes, host_peak_bytes, simulated, stages, modules) and a PNG (memory timeline with
    stage bands + a bar chart of the top modules). A config with `memory.budget` profiles the plan chosen
    for that budget.
plan_command(config, budget) -> Plan
"""
from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console

from vidrt.core.errors import VidrtError
from vidrt.memory.tracker import MemoryTracker, format_bytes, stage_table

STAGE_KEYS = ("name", "peak_bytes", "param_bytes", "activation_bytes", "seconds")


def _check_output(path: Path | None, key: str) -> Path | None:
    if path is None:
        return None
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise VidrtError(f"{key}: {path} is a folder, not a file")
    if not parent.is_dir():
        raise VidrtError(f"{key}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise VidrtError(f"{key}: {path} is not writable")
    return path


def _write_atomic(path: Path, data: bytes, key: str) -> None:
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        raise VidrtError(f"{key}: cannot write {path}: {exc.strerror or exc}") from None


def _host_hwm() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _budget_settings(config):
    budget = getattr(getattr(config, "memory", None), "budget", None)
    if budget is None:
        return None, None
    from vidrt.memory.planner import plan

    p = plan(config, budget)
    return p, p.settings


def profile_command(config, dry_run: bool = False, json_path: Path | None = None,
                    plot_path: Path | None = None, console: Console | None = None, gpus: int = 1) -> dict[str, Any]:
    console = console or Console()
    if gpus > 1 and not dry_run:
        raise VidrtError("--gpus: only with --dry-run (a real multi-GPU profile runs under torchrun; each rank's "
                         "sidecar has its peak)")
    json_path = _check_output(json_path, "--json")
    plot_path = _check_output(plot_path, "--plot")
    chosen, settings = _budget_settings(config)
    if dry_run:
        from vidrt.memory.simulate import simulate

        rep = simulate(config, settings, timeline=plot_path is not None, ranks=gpus)
        result = rep.to_dict(timeline=True)
        table = rep.table()
    else:
        result, table = _profile_real(config, settings)
    if chosen is not None:
        result["plan"] = chosen.to_dict()
    result["stages"] = [{**{k: s.get(k) for k in STAGE_KEYS}, **s} for s in result["stages"]]
    console.print(table)
    if json_path is not None:
        out = {k: v for k, v in result.items() if k != "timeline"}
        _write_atomic(json_path, (json.dumps(out, indent=2, default=str) + "\n").encode(), "--json")
    if plot_path is not None:
        _write_atomic(plot_path, render_plot(result), "--plot")
    return result


def _profile_real(config, settings) -> tuple[dict[str, Any], Any]:
    """Load the pipeline and run its stages (one tracked render, no file written)."""
    import torch

    from vidrt.models import get_adapter
    from vidrt.run.render import load_pipeline, request_from, resolve_device, run_stages

    adapter = get_adapter(config.model.family)
    device = resolve_device(list(config.devices))
    image = None
    if getattr(config, "image", None):
        from vidrt.run.video import load_image

        image = load_image(config.image)
    pipe = load_pipeline(config, device, with_image=image is not None)
    req = request_from(config, adapter, pipe, image)
    memory_dict = config.memory.as_dict() if hasattr(config.memory, "as_dict") else dict(vars(config.memory))
    if settings is not None:
        from vidrt.memory.planner import Plan  # noqa: F401

        memory_dict = dict(memory_dict)
        memory_dict.update({"slicing": ({"frames": settings.chunk_frames, "tokens": settings.chunk_tokens,
                                         "positions": settings.chunk_positions} if settings.slicing else "off"),
                            "offload": settings.offload, "vae_tiling": "on" if settings.vae_tiling else "off"})
    try:
        from vidrt.engine.slicing import apply_memory_config

        apply_memory_config(pipe, memory_dict, device)
    except ImportError:
        pass
    mem = MemoryTracker(device, track_modules=pipe, timeline=True)
    with mem:
        run_stages(pipe, adapter, req, device, mem, Console(file=io.StringIO()), show_progress=False)
    host = _host_hwm() if device.type != "cpu" else None
    result = {"model": str(config.model.path), "device": str(device), "simulated": False,
              "peak_bytes": int(mem.peak_bytes), "host_peak_bytes": host, "frames": req.frames,
              "height": req.height, "width": req.width, "stages": mem.stages, "modules": mem.modules,
              "timeline": [[t, b, s] for t, b, s in mem.timeline]}
    del pipe
    if device.type == "cuda":
        torch.cuda.empty_cache()
    table = stage_table(mem.stages, mem.modules, peak_bytes=mem.peak_bytes, host_peak_bytes=host,
                        title=f"measured {config.model.path} {req.frames}x{req.height}x{req.width} on {device}")
    return result, table


def render_plot(result: dict[str, Any]) -> bytes:
    """PNG bytes: memory over time with a band per stage, and the top modules' activation peaks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gib = 2 ** 30
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    timeline = result.get("timeline") or []
    simulated = result.get("simulated")
    if timeline:
        ts = [t for t, _, _ in timeline]
        bs = [b / gib for _, b, _ in timeline]
        ax1.step(ts, bs, where="post", color="black", lw=1)
        colors = ["#cfe2f3", "#d9ead3", "#fff2cc", "#f4cccc", "#ead1dc"]
        spans: list[list[Any]] = []
        for t, _, s in timeline:
            if s is None:
                continue
            if spans and spans[-1][0] == s:
                spans[-1][2] = t
            else:
                spans.append([s, t, t])
        for i, (name, a, b) in enumerate(spans):
            ax1.axvspan(a, max(b, a + 1e-6), color=colors[i % len(colors)], alpha=0.7, lw=0)
            ax1.text((a + b) / 2, max(bs) * 1.02 if bs else 0, name, ha="center", va="bottom", fontsize=8)
        ax1.set_xlabel("simulation time (s)" if simulated else "time (s)")
        ax1.set_ylim(0, max(bs) * 1.12 if bs and max(bs) > 0 else 1)
    else:  # no timeline: stage peaks as steps
        stages = result.get("stages", [])
        ax1.bar([s["name"] for s in stages], [s["peak_bytes"] / gib for s in stages], color="#6fa8dc")
    if simulated:
        ax1.set_title(f"simulated tensor memory (activations; peak {format_bytes(result.get('peak_bytes'))} incl. params)",
                      fontsize=9)
    else:
        ax1.set_title(f"memory on {result.get('device', '?')} (peak {format_bytes(result.get('peak_bytes'))})", fontsize=9)
    ax1.set_ylabel("GiB")
    mods = result.get("modules") or []
    if mods:
        names = [m["name"] for m in mods][::-1]
        vals = [m["activation_bytes"] / gib for m in mods][::-1]
        ax2.barh(range(len(names)), vals, color="#e69138")
        ax2.set_yticks(range(len(names)))
        ax2.set_yticklabels(names, fontsize=7)
        ax2.set_xlabel("activation peak (GiB)")
    ax2.set_title("top modules", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def plan_command(config, budget: str | None = None, console: Console | None = None, gpus: int = 1):
    from vidrt.memory.planner import plan

    console = console or Console()
    p = plan(config, budget, gpus=gpus)
    console.print(p.table())
    console.print(str(p))
    mem = p.memory_config()
    console.print("memory settings: " + json.dumps(mem))
    return p
