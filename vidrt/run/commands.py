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

import torch
import yaml
from rich.console import Console

from vidrt.core.errors import VidrtError
from vidrt.memory.planner import plan
from vidrt.memory.settings import fixed_settings, settings_from_config
from vidrt.memory.simulate import simulate
from vidrt.memory.report import stage_table
from vidrt.memory.tracker import MemoryTracker
from vidrt.models import get_adapter
from vidrt.run.memory_setup import AUTO_KEYS, apply_settings, choose_settings, disk_folder_for
from vidrt.run.plot import render_plot
from vidrt.run.render import load_pipeline, request_from, resolve_device
from vidrt.run.stages import run_stages
from vidrt.run.video import load_image

STAGE_KEYS = ("name", "peak_bytes", "param_bytes", "activation_bytes", "seconds")


def _check_output(path: Path | None, key: str) -> Path | None:
    if path is None:
        return None
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise VidrtError(f"{key}: {path} is a folder, not a file")
    if key == "--plot" and path.suffix.lower() != ".png":
        raise VidrtError(f"{key}: {path} must end in .png (the picture is a PNG)")
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


def _planned(config, gpus: int, gpu: str | None):
    """A dry run profiles what a render would apply: the config's memory keys, those left at "auto" planned for
    its budget on the GPU model (no planning without a budget or with nothing left to decide)."""
    fixed = fixed_settings(config)
    if config.memory.budget is None or all(k in fixed for k in AUTO_KEYS):
        return None, settings_from_config(config)
    p = plan(config, config.memory.budget, gpus=gpus, gpu=gpu)
    return p, p.settings


def profile_command(config, dry_run: bool = False, json_path: Path | None = None, plot_path: Path | None = None,
                    console: Console | None = None, gpus: int = 1, gpu: str | None = None) -> dict[str, Any]:
    """Peak memory per stage and module: simulated at full size (`dry_run`, with the stages' seconds predicted
    on the GPU model `gpu`) or measured in a real run on this machine."""
    console = console or Console()
    if gpus > 1 and not dry_run:
        raise VidrtError("--gpus: only with --dry-run (a real multi-GPU profile runs under torchrun; each rank's "
                         "sidecar has its peak)")
    if gpu is not None and not dry_run:
        raise VidrtError("--gpu: only with --dry-run (a real profile measures the device it runs on)")
    json_path = _check_output(json_path, "--json")
    plot_path = _check_output(plot_path, "--plot")
    if dry_run:
        chosen, settings = _planned(config, gpus, gpu)
        rep = simulate(config, settings, timeline=plot_path is not None, ranks=gpus, gpu=gpu)
        result = rep.to_dict(timeline=True)
        table = rep.table()
    else:
        result, table, chosen = _profile_real(config)
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


def _profile_real(config) -> tuple[dict[str, Any], Any, Any]:
    """Load the pipeline and run its stages with the settings a render would choose (one tracked render, no
    file written)."""
    adapter = get_adapter(config.model.family)
    device = resolve_device(list(config.devices))
    image = load_image(config.image) if config.image else None
    pipe = load_pipeline(config, device, with_image=image is not None)
    req = request_from(config, adapter, pipe, image)
    settings, chosen = choose_settings(pipe, config, device)
    apply_settings(pipe, settings, device, req.height, req.width, config.memory.kernels,
                   disk_folder_for(pipe, config, settings, Path(config.output.path)))
    mem = MemoryTracker(device, track_modules=pipe, timeline=True)
    with mem:
        run_stages(pipe, adapter, req, device, mem, Console(file=io.StringIO()), show_progress=False,
                   text_on_host=settings.text_encoder == "cpu" and device.type != "cpu")
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
    return result, table, chosen


def plan_command(config, budget: str | None = None, console: Console | None = None, gpus: int = 1,
                 gpu: str | None = None):
    """Every candidate with its predicted peak and seconds, the chosen one marked, its stages, and the chosen
    settings as a `memory:` block a config accepts as it is."""
    console = console or Console()
    p = plan(config, budget, gpus=gpus, gpu=gpu)
    console.print(p.candidates_table())
    console.print(p.table())
    console.print(str(p))
    console.print("# paste into the config:\n" + yaml.safe_dump({"memory": p.memory_config()}, sort_keys=False),
                  highlight=False, markup=False, end="")
    return p
