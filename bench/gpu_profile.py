"""Simulated vs real CUDA memory peaks on full-size models with random weights (about 2-3 minutes on one H100).

    python bench/gpu_profile.py                 # writes bench/results/gpu_profile.json and renders .md
    python bench/gpu_profile.py --report-only   # re-render gpu_profile.md from the JSON (no GPU)

For each case the same forward runs twice: for real on the GPU (weights initialised on the device, random),
measured with torch.cuda.max_memory_allocated minus the bytes allocated before the forward; and simulated
under FakeTensorMode on fake CPU tensors with vidrt's dispatch tracker (what `vidrt profile --dry-run` and
the planner use). Cases:

* Wan 2.1 T2V 1.3B transformer (30 blocks, bf16), one forward at 81x480x832 (21x60x104 latents, 512 text
  tokens), unsliced and sliced (chunk_tokens=4096) when vidrt.engine.slicing is available;
* AnimateDiff: SD1.5 UNet + MotionAdapter v1-5-2 (fp16), one forward at 16x512x512 with CFG (batch 2),
  unsliced and sliced (chunk_frames=4, chunk_positions=1024);
* the whole Wan 1.3B T2V run, stage by stage (skip with --no-pipeline).

The simulated forward runs every layer (no layer reduction) so the comparison is one to one.
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import results_io as rio  # noqa: E402

NAME = "gpu_profile"
GiB = 1024 ** 3


def wan_case(device, fake: bool):
    from vidrt.memory.simulate.fake import cast_
    from vidrt.models.known import build_module, components_from_folder, known_dir

    comps = components_from_folder(known_dir("Wan-AI/Wan2.1-T2V-1.3B-Diffusers"))
    model = cast_(build_module(comps["transformer"]), torch.bfloat16)
    dev = "cpu" if fake else device
    inputs = dict(hidden_states=torch.randn(1, 16, 21, 60, 104, device=dev, dtype=torch.bfloat16),
                  timestep=torch.full((1,), 999.0, device=dev),
                  encoder_hidden_states=torch.randn(1, 512, 4096, device=dev, dtype=torch.bfloat16),
                  return_dict=False)
    return model, inputs, {"chunk_tokens": 4096}


def animatediff_case(device, fake: bool):
    from diffusers import UNetMotionModel

    from vidrt.memory.simulate.fake import cast_
    from vidrt.models.known import Component, build_module, components_from_folder, known_dir

    sd = components_from_folder(known_dir("stable-diffusion-v1-5/stable-diffusion-v1-5"))
    adapter_cfg = __import__("json").loads(
        (known_dir("guoyww/animatediff-motion-adapter-v1-5-2") / "config.json").read_text())
    unet2d = build_module(sd["unet"])
    motion = build_module(Component("diffusers", "MotionAdapter", adapter_cfg))
    stand_in = SimpleNamespace(config=dict(motion.config), to=lambda *a, **k: None)
    model = cast_(UNetMotionModel.from_unet2d(unet2d, stand_in, load_weights=False), torch.float16)
    del unet2d, motion
    dev = "cpu" if fake else device
    inputs = dict(sample=torch.randn(2, 4, 16, 64, 64, device=dev, dtype=torch.float16),
                  timestep=torch.tensor(999, device=dev),
                  encoder_hidden_states=torch.randn(32, 77, 768, device=dev, dtype=torch.float16),
                  return_dict=False)
    return model, inputs, {"chunk_frames": 4, "chunk_positions": 1024}


def _slice(model, chunks):
    try:
        from vidrt.engine.slicing import enable_slicing
    except ImportError:
        return False
    enable_slicing(model, **chunks)
    return True


def real_peak(case, sliced: bool) -> tuple[int, float] | None:
    device = torch.device("cuda")
    with torch.device(device):
        model, inputs, chunks = case(device, fake=False)
    model.eval().requires_grad_(False)
    if sliced and not _slice(model, chunks):
        return None
    torch.cuda.synchronize()
    with torch.no_grad():
        model(**inputs)  # warm-up (cuDNN / SDPA workspaces, lazy buffers)
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        out = model(**inputs)
        torch.cuda.synchronize()
        secs = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() - before
    del out, model, inputs
    torch.cuda.empty_cache()
    return peak, secs


def simulated_peak(case, sliced: bool) -> tuple[int, float] | None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    from vidrt.memory.tracker import MemoryTracker

    t0 = time.perf_counter()
    with FakeTensorMode(allow_non_fake_inputs=True), torch.no_grad():
        model, inputs, chunks = case("cpu", fake=True)
        if sliced and not _slice(model, chunks):
            return None
        mem = MemoryTracker("cuda", count_device="cpu", timeline=False)
        with mem:
            with mem.stage("forward"):
                out = model(**inputs)
                del out
    return mem.stages[0]["activation_bytes"], time.perf_counter() - t0


def pipeline_stages() -> dict:
    """Whole Wan 1.3B T2V run (UMT5-XXL text encoding with CFG, one denoising step = two transformer calls,
    VAE decode), 81x480x832 bf16, every model resident (offload none): the real stage peaks measured with
    vidrt's CUDA tracker vs `vidrt.simulate` of the same config."""
    from vidrt.memory.simulate import MemorySettings, simulate
    from vidrt.memory.simulate.fake import build_modules
    from vidrt.memory.tracker import MemoryTracker
    from vidrt.models import get_adapter
    from vidrt.models.known import components_from_folder, known_dir
    from vidrt.models.simulation import SimParams

    path = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    cfg = SimpleNamespace(model=SimpleNamespace(family="wan", path=path, dtype="bfloat16", motion_adapter=None),
                          frames=81, height=480, width=832, guidance=5.0, image=None, devices=["cuda"])
    t0 = time.perf_counter()
    sim = simulate(cfg, MemorySettings(), track_modules=False)
    sim_secs = time.perf_counter() - t0
    adapter = get_adapter("wan")
    comps = components_from_folder(known_dir(path))
    torch.cuda.empty_cache()
    with torch.device("cuda"):
        mods = build_modules(comps, adapter, torch.bfloat16, reduce=False)
    gc.collect()  # building leaves fp32 originals in reference cycles (2.5 GiB here) until collected
    torch.cuda.empty_cache()
    mem = MemoryTracker("cuda", timeline=False)
    t0 = time.perf_counter()
    with torch.device("cuda"), torch.no_grad(), mem:
        adapter.simulate_stages(mem, mods, SimParams(
            frames=81, height=480, width=832, cfg=True, guidance=5.0, dtype=torch.bfloat16, with_image=False,
            text_len=512))
    real_secs = time.perf_counter() - t0
    stages = []
    for real in mem.stages:
        s = sim.stage(real["name"])
        stages.append({"stage": real["name"], "real_peak_gib": real["peak_bytes"] / GiB,
                       "sim_peak_gib": s["peak_bytes"] / GiB,
                       "error_pct": (s["peak_bytes"] - real["peak_bytes"]) / real["peak_bytes"] * 100,
                       "real_activation_gib": real["activation_bytes"] / GiB,
                       "sim_activation_gib": s["activation_bytes"] / GiB})
    del mods
    torch.cuda.empty_cache()
    return {"title": "Wan 1.3B T2V, 81x480x832 bf16, CFG, all models resident", "real_s": real_secs,
            "sim_s": sim_secs, "stages": stages,
            "run": {"real_peak_gib": mem.peak_bytes / GiB, "sim_peak_gib": sim.peak_bytes / GiB,
                    "error_pct": (sim.peak_bytes - mem.peak_bytes) / mem.peak_bytes * 100}}


# ------------------------------------------------------------------------------------------- report
def reading(run: dict) -> str:
    """The run's agreement in one sentence, computed from its numbers."""
    fwd = max(abs(r["error_pct"]) for r in run["forwards"]) if run.get("forwards") else None
    text = f"Per-forward peaks agree within {fwd:.1f} %." if fwd is not None else ""
    pipe = run.get("pipeline")
    if pipe:
        gaps = sorted(pipe["stages"], key=lambda s: s["sim_activation_gib"] - s["real_activation_gib"])
        under = [s for s in gaps if s["real_activation_gib"] - s["sim_activation_gib"] >= 0.005]
        text += (f" In the whole pipeline the simulated run peak is off by {pipe['run']['error_pct']:+.1f} %, "
                 f"stages by {min(s['error_pct'] for s in pipe['stages']):+.1f} % to "
                 f"{max(s['error_pct'] for s in pipe['stages']):+.1f} %")
        if under:
            text += ("; activations the simulation does not see: " + ", ".join(
                f"{s['stage']} +{s['real_activation_gib'] - s['sim_activation_gib']:.2f} GiB" for s in under))
        text += "."
    return text.strip()


def render(data: dict) -> str:
    lines = ["# Simulated vs real CUDA activation peaks (full size, random weights)", "",
             rio.provenance("bench/gpu_profile.py", NAME, data), "",
             "Real = max_memory_allocated during one forward minus memory_allocated before it (after a warm-up "
             "forward); simulated = vidrt's dispatch tracker on FakeTensorMode CPU tensors, same model and "
             "inputs, every layer run.", ""]
    for run in data["runs"]:
        lines += [*rio.run_heading(run),
                  "| case | slicing | real GiB | simulated GiB | error | real forward s | simulation s |",
                  "|---|---|---|---|---|---|---|"]
        for r in run.get("forwards", []):
            lines.append(f"| {r['case']} | {r['slicing']} | {r['real_gib']:.3f} | {r['sim_gib']:.3f} | "
                         f"{r['error_pct']:+.1f} % | {r['real_s']:.2f} | {r['sim_s']:.1f} |")
        pipe = run.get("pipeline")
        if pipe:
            lines += ["", f"### Whole pipeline: {pipe['title']}", "",
                      f"Real run {pipe['real_s']:.1f} s on the GPU; `vidrt.simulate` {pipe['sim_s']:.1f} s on the CPU.", "",
                      "| stage | real peak GiB | simulated peak GiB | error | real activations GiB | "
                      "simulated activations GiB |", "|---|---|---|---|---|---|"]
            for s in pipe["stages"]:
                lines.append(f"| {s['stage']} | {s['real_peak_gib']:.3f} | {s['sim_peak_gib']:.3f} | "
                             f"{s['error_pct']:+.1f} % | {s['real_activation_gib']:.3f} | {s['sim_activation_gib']:.3f} |")
            r = pipe["run"]
            lines.append(f"| **run** | **{r['real_peak_gib']:.3f}** | **{r['sim_peak_gib']:.3f}** | "
                         f"{r['error_pct']:+.1f} % | | |")
        lines += ["", f"Reading (computed): {reading(run)}", ""]
        lines += rio.notes_block(run.get("notes", []), rio.RUN_NOTES)
    lines += rio.notes_block(data.get("notes", []))
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-pipeline", action="store_true", help="only the single forwards")
    rio.add_run_args(ap, NAME)
    args = ap.parse_args(argv)
    if args.report_only:
        rio.write_text(args.out / f"{NAME}.md", render(rio.read_json(rio.source_json(args, NAME))))
        return
    rio.check_cuda("bench/gpu_profile.py")
    forwards = []
    cases = [("Wan2.1 1.3B transformer, 81x480x832 bf16, 1 forward", wan_case),
             ("SD1.5 UNet + MotionAdapter, 16x512x512 fp16, CFG batch 2", animatediff_case)]
    for label, case in cases:
        for sliced in (False, True):
            real = real_peak(case, sliced)
            if real is None:
                continue
            sim = simulated_peak(case, sliced)
            forwards.append({"case": label, "slicing": "sliced" if sliced else "unsliced", "real_gib": real[0] / GiB,
                             "sim_gib": sim[0] / GiB, "error_pct": (sim[0] - real[0]) / real[0] * 100,
                             "real_s": real[1], "sim_s": sim[1]})
            print(forwards[-1], flush=True)
    extra = {} if args.no_pipeline else {"pipeline": pipeline_stages()}
    data = rio.save_run(args, NAME, argv, forwards=forwards, **extra)
    text = render(data)
    rio.write_text(args.out / f"{NAME}.md", text)
    print(text)


if __name__ == "__main__":
    main()
