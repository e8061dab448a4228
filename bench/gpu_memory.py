"""Real CUDA activation peaks, unsliced vs sliced (random weights; about 2-3 minutes on one H100).

    python bench/gpu_memory.py                 # writes bench/results/gpu_memory.json and renders .md
    python bench/gpu_memory.py --report-only   # re-render gpu_memory.md from the JSON (no GPU)

Cases: Wan 2.1 1.3B transformer (30 blocks, bf16), one forward at 81x480x832 (21x60x104 latents, 32760
tokens, 512 text tokens); AnimateDiff SD1.5 UNet + MotionAdapter (fp16), one forward at 16x512x512 with
CFG (batch 2). Peak = torch.cuda.max_memory_allocated during the forward minus the bytes allocated before
it (weights and inputs), i.e. the activation peak the simulator predicts (docs: 1.50 GiB / 2.03 GiB
unsliced; sliced 0.33 GiB / 0.62 GiB simulated).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import results_io as rio  # noqa: E402

NAME = "gpu_memory"
GiB = 1024 ** 3


def measure(model, kwargs, repeats: int = 2):
    """(activation peak bytes, median seconds, output) of one forward."""
    times, out, peak = [], None, 0
    with torch.no_grad():
        for _ in range(repeats):
            out = None
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            out = model(**kwargs)[0]
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
            peak = torch.cuda.max_memory_allocated() - base
    return peak, sorted(times)[len(times) // 2], out


def compare(name, model, kwargs, rows):
    from vidrt.engine.slicing import disable_slicing, enable_slicing

    with torch.no_grad():
        model(**kwargs)  # warm-up (kernels, workspaces)
    up, ut, ref = measure(model, kwargs)
    ref = ref.float().cpu()
    summary = enable_slicing(model)
    try:
        sp, st, out = measure(model, kwargs)
    finally:
        disable_slicing(model)
    diff = (out.float().cpu() - ref).abs().max().item()
    rows.append({"case": name, "unsliced_gib": up / GiB, "sliced_gib": sp / GiB, "unsliced_s": ut, "sliced_s": st,
                 "max_abs_diff": diff, "patched": summary["patched"]})
    print(f"{name}: {up / GiB:.3f} -> {sp / GiB:.3f} GiB ({up / max(sp, 1):.2f}x), "
          f"{ut:.2f} s -> {st:.2f} s, max abs diff {diff:.2e}", flush=True)


def wan_case(rows):
    from diffusers import WanTransformer3DModel

    cfg = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
               out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
               qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = WanTransformer3DModel(**cfg).eval()
    model.to(torch.bfloat16)
    model.rope.freqs_cos = model.rope.freqs_cos.float()
    model.rope.freqs_sin = model.rope.freqs_sin.float()
    kwargs = dict(hidden_states=torch.randn(1, 16, 21, 60, 104, device="cuda", dtype=torch.bfloat16),
                  timestep=torch.tensor([500], device="cuda"),
                  encoder_hidden_states=torch.randn(1, 512, 4096, device="cuda", dtype=torch.bfloat16),
                  return_dict=False)
    compare("Wan 2.1 1.3B, 81x480x832, bf16, one transformer forward", model, kwargs, rows)
    del model, kwargs
    torch.cuda.empty_cache()


def animatediff_case(rows):
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    torch.manual_seed(0)
    with torch.device("cuda"):
        unet = UNet2DConditionModel(cross_attention_dim=768)
        adapter = MotionAdapter()
        model = UNetMotionModel.from_unet2d(unet, adapter, load_weights=False).eval()
        del unet, adapter
        # the motion modules' zero-initialised output projections would make them identities
        with torch.no_grad():
            for p in model.parameters():
                if p.abs().max() == 0:
                    p.normal_(0, 0.02)
    model.to(torch.float16)
    torch.cuda.empty_cache()
    b, f = 2, 16
    kwargs = dict(sample=torch.randn(b, 4, f, 64, 64, device="cuda", dtype=torch.float16),
                  timestep=torch.tensor(500, device="cuda"),
                  encoder_hidden_states=torch.randn(b * f, 77, 768, device="cuda", dtype=torch.float16),
                  return_dict=False)
    compare("AnimateDiff SD1.5 + MotionAdapter, 16x512x512, fp16, CFG batch 2, one UNet forward", model, kwargs,
            rows)
    del model, kwargs
    torch.cuda.empty_cache()


def render(data: dict) -> str:
    lines = ["# Feature slicer: real CUDA activation peaks", "", rio.provenance("bench/gpu_memory.py", NAME, data), ""]
    for run in data["runs"]:
        lines += [*rio.run_heading(run),
                  f"Random weights; chunk sizes auto; total {run['seconds']:.0f} s. Peak = max_memory_allocated during "
                  "one forward minus memory allocated before it (weights, inputs).", "",
                  "| case | unsliced | sliced | ratio | time unsliced | time sliced | max abs diff |",
                  "|---|---|---|---|---|---|---|"]
        for r in run["rows"]:
            if "error" in r:
                lines.append(f"| {r['case']} | failed: {r['error']} | | | | | |")
                continue
            lines.append(f"| {r['case']} | {r['unsliced_gib']:.3f} GiB | {r['sliced_gib']:.3f} GiB | "
                         f"{r['unsliced_gib'] / r['sliced_gib']:.2f}x | {r['unsliced_s']:.2f} s | {r['sliced_s']:.2f} s | "
                         f"{r['max_abs_diff']:.2e} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    rio.add_run_args(ap, NAME)
    args = ap.parse_args(argv)
    if args.report_only:
        rio.write_text(args.out / f"{NAME}.md", render(rio.read_json(rio.source_json(args, NAME))))
        return
    rio.check_cuda("bench/gpu_memory.py")
    rows: list = []
    t0 = time.time()
    for case in (wan_case, animatediff_case):
        try:
            case(rows)
        except torch.cuda.OutOfMemoryError as exc:  # pragma: no cover - reported, not fatal
            rows.append({"case": case.__name__, "error": str(exc)[:80]})
    data = rio.save_run(args, NAME, argv, seconds=time.time() - t0, rows=rows)
    rio.write_text(args.out / f"{NAME}.md", render(data))


if __name__ == "__main__":
    main()
