"""Speed at a memory budget, side by side on one lent GPU: diffusers' plain `pipe(...)` with everything on the
GPU against vidrt's render at `memory.budget` auto and fixed budgets, with the planner's predicted seconds next
to the measured ones.

    PYTHONUNBUFFERED=1 python bench/gpu_speed.py        # on a GPU: writes $OUT (or bench/results)/gpu_speed.json + .md
    python bench/gpu_speed.py --tiny                    # the same code path on tiny models on the CPU
    python bench/gpu_speed.py --report-only             # re-render gpu_speed.md from gpu_speed.json

Cases (random weights from the shipped configs; Wan's text encoder a 1-layer stand-in at UMT5-XXL width, as in
bench/gpu_pipeline.py): Wan 2.1 1.3B 81x480x832 bf16, CFG 5, budgets auto / 12 / 8 / 6 / 4 GiB; AnimateDiff
16x512x512 fp16, CFG 7.5, budgets auto / 6 / 4 / 2 GiB. Each run: one warm-up, then STEPS timed denoising steps
and the decode. Seconds per step = the median interval between scheduler steps after the first; peak = the
largest allocated bytes over the call (vidrt: the largest per-stage peak its tracker records).
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from gpu_pipeline import animatediff_pipe, wan_pipe  # noqa: E402

GiB = 2 ** 30
STEPS = 3
TARGETS = {("wan", "auto"): 1.02, ("wan", "8GiB"): 1.15, ("wan", "4GiB"): 1.5, ("animatediff", "auto"): 1.02,
           ("animatediff", "4GiB"): 1.3}     # the issue's bars: time / diffusers' time


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepClock:
    """Times between scheduler steps (the pipeline's loop calls `scheduler.step` once per step)."""

    def __init__(self, pipe, device):
        self.pipe, self.device, self.times = pipe, device, []
        self.original = pipe.scheduler.__dict__.get("step")

    def __enter__(self):
        sch, inner = self.pipe.scheduler, self.pipe.scheduler.step

        def step(*args, **kwargs):
            out = inner(*args, **kwargs)
            _sync(self.device)
            self.times.append(time.perf_counter())
            return out

        sch.step = step
        return self

    def __exit__(self, *exc):
        if self.original is None:
            self.pipe.scheduler.__dict__.pop("step", None)
        else:
            self.pipe.scheduler.step = self.original

    def per_step(self) -> float:
        gaps = [b - a for a, b in zip(self.times, self.times[1:])]
        return statistics.median(gaps) if gaps else float("nan")


def _peak_reset(device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)


def diffusers_run(pipe, call: dict, device) -> dict:
    with torch.no_grad():
        pipe(**dict(call, num_inference_steps=1), output_type="latent")          # warm-up
        _peak_reset(device)
        with StepClock(pipe, device) as clock:
            start = time.perf_counter()
            pipe(**call, output_type="pt")
            _sync(device)
            end = time.perf_counter()
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"run": "diffusers pipe(...)", "budget": None, "peak_bytes": peak, "step_seconds": clock.per_step(),
            "decode_seconds": end - clock.times[-1], "total_seconds": end - start}


def vidrt_run(pipe, family: str, shape: dict, budget: str, device, workdir: Path, dtype_name: str) -> dict:
    from vidrt.config import parse_config
    from vidrt.run import render as runner

    if device.type != "cuda":     # the tiny dry run: no mp4 needed, the frames are consumed as a writer would
        runner.write_video = lambda path, frames, fps, size: sum(1 for _ in frames)
    conf = parse_config(dict(model=dict(family=family, path=str(workdir), dtype=dtype_name),
                             prompt="a red circle moves left", negative_prompt="", seed=0,
                             memory={"budget": budget}, devices=[str(device)],
                             output=dict(path=str(workdir / f"{family}.mp4"), fps=8), **shape))
    warm = conf.model_copy(update={"steps": 1})
    runner.render(warm, pipe=pipe, show_progress=False, checkpoints=False)
    _peak_reset(device)
    with StepClock(pipe, device) as clock:
        result = runner.render(conf, pipe=pipe, show_progress=False, checkpoints=False)
    side = result.sidecar
    stages = {s["name"]: s for s in side["stages"]}
    plan = side["memory"].get("plan") or {}
    predicted = plan.get("predicted_seconds") or {}
    return {"run": f"vidrt, budget {budget}", "budget": budget,
            "peak_bytes": max(s["peak_bytes"] for s in side["stages"]), "step_seconds": clock.per_step(),
            "decode_seconds": stages["vae_decode"]["seconds"], "total_seconds": side["seconds_total"],
            "plan": plan.get("memory"), "plan_gpu": plan.get("gpu"),
            "predicted_step_seconds": predicted.get("denoise_step"),
            "predicted_decode_seconds": predicted.get("vae_decode"), "predicted_peak_bytes": plan.get("peak_bytes")}


def run_case(name: str, family: str, build, call: dict, shape: dict, budgets: list[str], device, dtype,
             dtype_name: str, workdir: Path) -> list[dict]:
    rows = []
    pipe = build(dtype, device)
    try:
        base = diffusers_run(pipe, call, device)
        rows.append(dict(base, case=name, family=family))
        print(f"{name}: diffusers {base['step_seconds']:.3f} s/step, peak {base['peak_bytes']}", flush=True)
    except Exception as exc:     # a lent GPU's minutes are few: report and go on
        traceback.print_exc()
        rows.append({"case": name, "family": family, "run": "diffusers pipe(...)", "error": str(exc)[:200]})
    for budget in budgets:
        pipe.to("cpu")                 # each render places the weights as its plan says
        try:
            row = vidrt_run(pipe, family, shape, budget, device, workdir, dtype_name)
            rows.append(dict(row, case=name, family=family))
            print(f"{name}: vidrt {budget}: {row['step_seconds']:.3f} s/step (predicted "
                  f"{row['predicted_step_seconds']}), peak {row['peak_bytes']}, plan {row['plan']}", flush=True)
        except Exception as exc:
            traceback.print_exc()
            rows.append({"case": name, "family": family, "run": f"vidrt, budget {budget}", "budget": budget,
                         "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"})
    del pipe
    gc.collect()
    return rows


def _fmt(v, spec: str = ".3f") -> str:
    return "-" if v is None or (isinstance(v, float) and v != v) else format(v, spec)


def render_report(data: dict) -> str:
    m = data["meta"]
    lines = [f"# Speed at a memory budget on {m['device']} (bench/gpu_speed.py)", "",
             f"Rendered from gpu_speed.json by `python bench/gpu_speed.py --report-only`. Run: `{m['command']}` at "
             f"commit {m['commit']}, {m['date']}, {m['machine']}, torch {m['torch']}. {STEPS} timed steps after a "
             "warm-up; seconds per step = median interval between scheduler steps; predicted = the plan's "
             "seconds on the GPU model it was priced for.", "",
             "| case | run | plan | peak GiB | s/step | x diffusers | target | predicted s/step | predicted / "
             "measured | decode s |", "|---|---|---|---|---|---|---|---|---|---|"]
    base = {r["case"]: r for r in data["rows"] if r["run"].startswith("diffusers") and "error" not in r}
    for r in data["rows"]:
        if "error" in r:
            lines.append(f"| {r['case']} | {r['run']} | failed: {r['error']} | | | | | | | |")
            continue
        b = base.get(r["case"])
        ratio = r["step_seconds"] / b["step_seconds"] if b and r is not b else None
        target = TARGETS.get((r["family"], r.get("budget")))
        met = "" if target is None or ratio is None else f"<= {target:.2f}x {'met' if ratio <= target else 'NOT met'}"
        pred = r.get("predicted_step_seconds")
        plan = "" if not r.get("plan") else ", ".join(f"{k} {v}" for k, v in r["plan"].items() if k != "budget")
        lines.append(f"| {r['case']} | {r['run']} | {plan} | {_fmt(r['peak_bytes'] / GiB if r.get('peak_bytes') else None)} "
                     f"| {_fmt(r['step_seconds'])} | {_fmt(ratio, '.2f')} | {met} | {_fmt(pred)} | "
                     f"{_fmt(pred / r['step_seconds'] if pred else None, '.2f')} | {_fmt(r['decode_seconds'], '.2f')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny models, small shapes, CPU (a dry run of this script)")
    ap.add_argument("--report-only", action="store_true", help="re-render the .md from the .json")
    ap.add_argument("--out", type=Path, default=None, help="folder of gpu_speed.json/.md (default $OUT or bench/results)")
    ap.add_argument("cases", nargs="*", default=["wan", "animatediff"])
    args = ap.parse_args()
    out = args.out or Path(os.environ.get("OUT", ROOT / "bench" / "results"))
    stem = "gpu_speed_tiny" if args.tiny else "gpu_speed"
    if args.report_only:
        data = json.loads((out / f"{stem}.json").read_text())
        (out / f"{stem}.md").write_text(render_report(data))
        return
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    if not args.tiny and device.type != "cuda":
        sys.exit("error: no CUDA device (use --tiny for a CPU dry run)")
    half, bf16 = (torch.float32, torch.float32) if args.tiny else (torch.float16, torch.bfloat16)
    workdir = Path(tempfile.mkdtemp(prefix="vidrt-gpu-speed-"))
    (workdir / "model_index.json").write_text("{}")
    rows: list[dict] = []
    if "wan" in args.cases:
        h, w, f = (32, 32, 9) if args.tiny else (480, 832, 81)
        call = dict(prompt="a red circle moves left", negative_prompt="", num_frames=f, height=h, width=w,
                    num_inference_steps=STEPS, guidance_scale=5.0, generator=torch.Generator("cpu").manual_seed(0))
        budgets = ["auto", "1GiB"] if args.tiny else ["auto", "12GiB", "8GiB", "6GiB", "4GiB"]
        rows += run_case(f"Wan 1.3B {f}x{h}x{w}", "wan", lambda d, dev: wan_pipe(d, dev, args.tiny), call,
                         dict(frames=f, height=h, width=w, steps=STEPS, guidance=5.0), budgets, device, bf16,
                         "float32" if args.tiny else "bfloat16", workdir)
    if "animatediff" in args.cases:
        size, f = (32, 4) if args.tiny else (512, 16)
        call = dict(prompt="a red circle moves left", negative_prompt="", num_frames=f, height=size, width=size,
                    num_inference_steps=STEPS, guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(0))
        budgets = ["auto", "1GiB"] if args.tiny else ["auto", "6GiB", "4GiB", "2GiB"]
        rows += run_case(f"AnimateDiff {f}x{size}x{size}", "animatediff",
                         lambda d, dev: animatediff_pipe(d, dev, args.tiny), call,
                         dict(frames=f, height=size, width=size, steps=STEPS, guidance=7.5), budgets, device, half,
                         "float32" if args.tiny else "float16", workdir)
    commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    meta = {"command": "python bench/gpu_speed.py" + (" --tiny" if args.tiny else ""),
            "commit": commit.stdout.strip() or "unknown", "date": datetime.datetime.now(datetime.timezone.utc)
            .strftime("%Y-%m-%d %H:%M UTC"), "machine": f"{platform.platform()}, {os.cpu_count()} CPUs",
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (--tiny dry run)",
            "torch": torch.__version__}
    data = {"meta": meta, "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(data, indent=1) + "\n")
    (out / f"{stem}.md").write_text(render_report(data))
    print(f"wrote {out / stem}.json and .md")


if __name__ == "__main__":
    main()
