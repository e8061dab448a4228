"""Real CUDA peaks of full-size denoisers (random weights: memory needs no training), unsliced vs vidrt's
slicing, in one run, for a lent GPU:

    PYTHONUNBUFFERED=1 python bench/gpu_check.py          # writes bench/results/gpu_check.json, renders .md
    python bench/gpu_check.py animatediff i2vgen --append  # some cases, added as a new run to the JSON
    python bench/gpu_check.py --report-only               # re-render gpu_check.md from the JSON (no GPU)

Each case builds the real diffusers class from the shipped config.json (vidrt/models/known_configs), runs one
forward on the benchmark shape, and reports peak bytes above what was resident before the call
(parameters + inputs), so the numbers are activations, comparable to the simulator's (bench/results/memory.json,
read at run time for the note column).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import results_io as rio  # noqa: E402

NAME = "gpu_check"
KNOWN = ROOT / "vidrt" / "models" / "known_configs"
GiB = 2 ** 30
CASES = ("wan_13b", "animatediff", "i2vgen", "wan_vae")
SIM_KEYS = {"wan_13b": "wan13", "animatediff": "animatediff", "i2vgen": "i2vgen"}   # memory.json's sim rows


def cfg(model: str, sub: str = "") -> dict:
    path = KNOWN / model / sub / "config.json" if sub else KNOWN / model / "config.json"
    return {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}


def measure(fn):
    import torch

    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with torch.no_grad():
        out = fn()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() - base
    return peak, seconds, out


def sim_note(case: str) -> str:
    """What the simulator predicts for the same case (the committed bench/results/memory.json)."""
    mem = rio.committed("memory") or {}
    row = mem.get("sim", {}).get(SIM_KEYS.get(case, ""))
    if not row:
        return ""
    sliced = row.get("sliced_accelerator_bytes", row["sliced_bytes"])
    return f"simulated {row['unsliced_bytes'] / GiB:.3f} GiB unsliced, {sliced / GiB:.3f} GiB sliced"


def compare(case: str, name: str, pipe_like, run) -> dict:
    from vidrt.engine.slicing import disable_slicing, enable_slicing

    run()  # warm-up (kernels, cuDNN plans)
    peak_u, t_u, out_u = measure(run)
    out_u = out_u.float().cpu()
    enable_slicing(pipe_like)
    try:
        measure(run)   # warm-up of the sliced shapes
        peak_s, t_s, out_s = measure(run)
    finally:
        disable_slicing(pipe_like)
    return {"case": case, "kind": "compare", "name": name, "unsliced_gib": peak_u / GiB, "sliced_gib": peak_s / GiB,
            "ratio": peak_u / max(peak_s, 1), "unsliced_s": t_u, "sliced_s": t_s, "time_ratio": t_s / t_u,
            "max_abs_diff": (out_s.float().cpu() - out_u).abs().max().item(), "max_abs_out": out_u.abs().max().item(),
            "note": sim_note(case)}


def wan_13b() -> list[dict]:
    import torch
    from diffusers import WanTransformer3DModel

    from vidrt.memory.tracker import MemoryTracker

    with torch.device("cuda"):
        model = WanTransformer3DModel.from_config(cfg("Wan-AI--Wan2.1-T2V-1.3B-Diffusers", "transformer"))
    model = model.to(torch.bfloat16).eval()
    g = torch.Generator("cuda").manual_seed(0)
    x = torch.randn(1, 16, 21, 60, 104, device="cuda", dtype=torch.bfloat16, generator=g)
    text = torch.randn(1, 512, 4096, device="cuda", dtype=torch.bfloat16, generator=g)
    t = torch.tensor([500], device="cuda")

    def forward():
        return model(x, t, text, return_dict=False)[0]

    rows = [compare("wan_13b", "Wan 1.3B transformer, 1 forward, 81x480x832 bf16", model, forward)]
    # the tracker on CUDA reports the allocator's numbers
    with MemoryTracker("cuda") as mem, torch.no_grad(), mem.stage("denoise", params=[model]):
        forward()
    rows.append({"case": "tracker", "kind": "tracker", "name": "tracker on CUDA (Wan 1.3B unsliced)",
                 "stage_peak_gib": mem.stages[0]["peak_bytes"] / GiB,
                 "activation_gib": mem.stages[0]["activation_bytes"] / GiB})
    return rows


def animatediff() -> list[dict]:
    import torch
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    with torch.device("cuda"):
        unet = UNet2DConditionModel.from_config(cfg("stable-diffusion-v1-5--stable-diffusion-v1-5", "unet"))
        adapter = MotionAdapter.from_config(cfg("guoyww--animatediff-motion-adapter-v1-5-2"))
        model = UNetMotionModel.from_unet2d(unet, adapter)
    model = model.to(torch.float16).eval()
    del unet, adapter
    g = torch.Generator("cuda").manual_seed(0)
    x = torch.randn(2, 4, 16, 64, 64, device="cuda", dtype=torch.float16, generator=g)
    text = torch.randn(2 * 16, 77, 768, device="cuda", dtype=torch.float16, generator=g)
    t = torch.tensor(500, device="cuda")
    return [compare("animatediff", "AnimateDiff UNet, 16x512x512 fp16, CFG batch 2", model,
                    lambda: model(x, t, encoder_hidden_states=text).sample)]


def i2vgen() -> list[dict]:
    import torch
    from diffusers import I2VGenXLUNet

    with torch.device("cuda"):
        model = I2VGenXLUNet.from_config(cfg("ali-vilab--i2vgen-xl", "unet"))
    model = model.to(torch.float16).eval()
    g = torch.Generator("cuda").manual_seed(0)
    x = torch.randn(2, 4, 16, 64, 64, device="cuda", dtype=torch.float16, generator=g)
    img = torch.randn(2, 4, 16, 64, 64, device="cuda", dtype=torch.float16, generator=g)
    text = torch.randn(2, 77, 1024, device="cuda", dtype=torch.float16, generator=g)
    emb = torch.randn(2, 1024, device="cuda", dtype=torch.float16, generator=g)
    t = torch.tensor(500, device="cuda")
    fps = torch.tensor([16, 16], device="cuda")
    return [compare("i2vgen", "I2VGen-XL UNet, 16x512x512 fp16, CFG batch 2", model,
                    lambda: model(x, t, fps=fps, image_latents=img, image_embeddings=emb, encoder_hidden_states=text,
                                  return_dict=False)[0])]


def wan_vae() -> list[dict]:
    import torch
    from diffusers import AutoencoderKLWan

    from vidrt.models.wan import WanAdapter

    with torch.device("cuda"):
        vae = AutoencoderKLWan.from_config(cfg("Wan-AI--Wan2.1-T2V-1.3B-Diffusers", "vae"))
    vae = vae.to(torch.bfloat16).eval()
    z = torch.randn(1, 16, 21, 60, 104, device="cuda", dtype=torch.bfloat16)

    class Holder:
        pass

    pipe = Holder()
    pipe.vae = vae
    peak_d, t_d, _ = measure(lambda: vae.decode(z, return_dict=False)[0])

    def streamed():
        n = 0
        for chunk in WanAdapter().decode_stream(pipe, z):
            n += chunk.shape[2]
            del chunk
        return torch.tensor(n)

    peak_s, t_s, n = measure(streamed)
    return [{"case": "wan_vae", "kind": "vae", "name": "Wan VAE decode 81x480x832 bf16: diffusers `decode` vs vidrt "
             "streamed", "unsliced_gib": peak_d / GiB, "sliced_gib": peak_s / GiB, "ratio": peak_d / max(peak_s, 1),
             "unsliced_s": t_d, "sliced_s": t_s, "time_ratio": t_s / t_d, "frames": int(n), "note": ""}]


# ------------------------------------------------------------------------------------------- report
HEADER = ["| case | unsliced GiB | sliced GiB | ratio | unsliced s | sliced s | time ratio | max abs diff | note |",
          "|---|---|---|---|---|---|---|---|---|"]


def row_line(r: dict) -> str:
    kind = r.get("kind")
    if kind == "failed":
        return f"| {r['case']} failed: {r['error']} | | | | | | | | |"
    if kind == "tracker":
        return (f"| {r['name']} | stage peak {r['stage_peak_gib']:.3f} GiB, activations {r['activation_gib']:.3f} GiB "
                "| | | | | | | |")
    diff = f"{r['frames']} frames" if kind == "vae" else f"{r['max_abs_diff']:.2e} (max |out| {r['max_abs_out']:.2f})"
    return (f"| {r['name']} | {r['unsliced_gib']:.3f} | {r['sliced_gib']:.3f} | {r['ratio']:.2f}x | "
            f"{r['unsliced_s']:.2f} | {r['sliced_s']:.2f} | {r['time_ratio']:.2f}x | {diff} | {r.get('note', '')} |")


def render(data: dict) -> str:
    lines = ["# Real CUDA peaks of full-size denoisers, unsliced vs sliced (bench/gpu_check.py)", "",
             rio.provenance("bench/gpu_check.py", NAME, data), "",
             "Random weights, one forward per case after a warm-up forward; peak = max allocated above resident "
             "params+inputs; *time ratio* = sliced / unsliced seconds; the Wan VAE row compares diffusers' `decode` "
             "(unsliced columns) with vidrt's streamed decode (sliced columns).", ""]
    for run in data["runs"]:
        lines += [*rio.run_heading(run), *HEADER, *[row_line(r) for r in run["rows"]], ""]
        lines += rio.notes_block(run.get("notes", []), rio.RUN_NOTES)
    lines += rio.notes_block(data.get("notes", []))
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cases", nargs="*", help=f"cases to run (default all: {', '.join(CASES)})")
    rio.add_run_args(ap, NAME)
    args = ap.parse_args(argv)
    unknown = sorted(set(args.cases) - set(CASES))
    if unknown:
        ap.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    if args.report_only:
        rio.write_text(args.out / f"{NAME}.md", render(rio.read_json(rio.source_json(args, NAME))))
        return
    rio.check_cuda("bench/gpu_check.py")
    import torch

    rows: list[dict] = []
    for case in (wan_13b, animatediff, i2vgen, wan_vae):
        if args.cases and case.__name__ not in args.cases:
            continue
        try:
            rows += case()
        except Exception as exc:  # noqa: BLE001 - one failing case must not cost the others their (lent) run
            traceback.print_exc()
            rows.append({"case": case.__name__, "kind": "failed", "error": f"{type(exc).__name__}: {exc}"[:200]})
        print(row_line(rows[-1]), flush=True)
        torch.cuda.empty_cache()
    data = rio.save_run(args, NAME, argv, rows=rows)
    text = render(data)
    rio.write_text(args.out / f"{NAME}.md", text)
    print(text)


if __name__ == "__main__":
    main()
