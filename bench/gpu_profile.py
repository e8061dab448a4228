"""Simulated vs real CUDA memory peaks on full-size models with random weights (about 2-3 minutes on one H100).

    OUT=bench/results python bench/gpu_profile.py        # writes $OUT/gpu_profile.md

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

import gc
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vidrt.memory.simulate.fake import cast_  # noqa: E402
from vidrt.models.known import build_module, components_from_folder, known_dir  # noqa: E402
from vidrt.memory.tracker import MemoryTracker  # noqa: E402

GiB = 1024 ** 3


def wan_case(device, fake: bool):
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

    sd = components_from_folder(known_dir("stable-diffusion-v1-5/stable-diffusion-v1-5"))
    adapter_cfg = __import__("json").loads(
        (known_dir("guoyww/animatediff-motion-adapter-v1-5-2") / "config.json").read_text())
    from vidrt.models.known import Component

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


def pipeline_stages() -> list[str]:
    """Whole Wan 1.3B T2V run (UMT5-XXL text encoding with CFG, one denoising step = two transformer calls,
    VAE decode), 81x480x832 bf16, every model resident (offload none): the real stage peaks measured with
    vidrt's CUDA tracker vs `vidrt.simulate` of the same config."""
    from vidrt.memory.simulate import MemorySettings, simulate
    from vidrt.memory.simulate.fake import build_modules
    from vidrt.models import get_adapter

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
        adapter.simulate_stages(mem, mods, SimpleNamespace(
            frames=81, height=480, width=832, cfg=True, guidance=5.0, dtype=torch.bfloat16, with_image=False,
            text_len=512, denoise_variants=None, decode_variants=None, fast_cfg=False))
    real_secs = time.perf_counter() - t0
    rows = []
    for real in mem.stages:
        s = sim.stage(real["name"])
        err = (s["peak_bytes"] - real["peak_bytes"]) / real["peak_bytes"] * 100
        rows.append(f"| {real['name']} | {real['peak_bytes'] / GiB:.3f} | {s['peak_bytes'] / GiB:.3f} | {err:+.1f} % | "
                    f"{real['activation_bytes'] / GiB:.3f} | {s['activation_bytes'] / GiB:.3f} |")
    err = (sim.peak_bytes - mem.peak_bytes) / mem.peak_bytes * 100
    rows.append(f"| **run** | **{mem.peak_bytes / GiB:.3f}** | **{sim.peak_bytes / GiB:.3f}** | {err:+.1f} % | | |")
    del mods
    torch.cuda.empty_cache()
    return ["", "## Whole pipeline: Wan 1.3B T2V, 81x480x832 bf16, CFG, all models resident", "",
            f"Real run {real_secs:.1f} s on the GPU; `vidrt.simulate` {sim_secs:.1f} s on the CPU.", "",
            "| stage | real peak GiB | simulated peak GiB | error | real activations GiB | simulated activations GiB |",
            "|---|---|---|---|---|---|", *rows]


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("gpu_profile.py needs a CUDA device")
    out_dir = Path(os.environ.get("OUT", ROOT / "bench/results"))
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    cases = [("Wan2.1 1.3B transformer, 81x480x832 bf16, 1 forward", wan_case),
             ("SD1.5 UNet + MotionAdapter, 16x512x512 fp16, CFG batch 2", animatediff_case)]
    for label, case in cases:
        for sliced in (False, True):
            real = real_peak(case, sliced)
            if real is None:
                continue
            sim = simulated_peak(case, sliced)
            err = (sim[0] - real[0]) / real[0] * 100
            rows.append(f"| {label} | {'sliced' if sliced else 'unsliced'} | {real[0] / GiB:.3f} | "
                        f"{sim[0] / GiB:.3f} | {err:+.1f} % | {real[1]:.2f} | {sim[1]:.1f} |")
            print(rows[-1], flush=True)
    text = ["# Simulated vs real CUDA activation peaks (full size, random weights)", "",
            f"Device: {torch.cuda.get_device_name()}; torch {torch.__version__}. Real = "
            "max_memory_allocated during one forward minus memory_allocated before it (after a warm-up "
            "forward); simulated = vidrt's dispatch tracker on FakeTensorMode CPU tensors, same model and "
            "inputs, every layer run. `python bench/gpu_profile.py`.", "",
            "| case | slicing | real GiB | simulated GiB | error | real forward s | simulation s |",
            "|---|---|---|---|---|---|---|", *rows]
    if "--no-pipeline" not in sys.argv:
        text += pipeline_stages()
    (out_dir / "gpu_profile.md").write_text("\n".join(text) + "\n")
    print("\n".join(text))


if __name__ == "__main__":
    main()
