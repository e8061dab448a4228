"""Memory benchmark of the feature slicer: unsliced vs sliced in one run.

Part 1 (real, CPU, fp32): random-init models of the real classes at moderate width, shapes where the
activations dominate (16 frames, 128 px video / 16x16 or 32x32 latents). Reports peak activation bytes
(a TorchDispatchMode counting live tensor storages created during the forward: parameters and inputs are
not counted), the ratio, wall time (best of 2, no counter attached), and max |sliced - unsliced|.

Part 2 (simulated, full size): the same counter on models built under FakeTensorMode with fake *CPU*
tensors (their SDPA takes the flash path as on a GPU; the meta device or fake CUDA would fall back to
math attention). Wan is built with 2 of its 30/40 blocks: blocks are identical and the peak is reached
inside one block (checked: 2-block and 30-block unsliced Wan 1.3B both peak at 1.50 GiB).

The full-size rows are sliced twice: with the automatic chunks a CPU run picks (the inputs are CPU fake
tensors) and with the larger floors `auto` uses on an accelerator (SlicingConfig(accelerator=True)).

    python bench/memory.py                # everything, writes bench/results/memory.json and renders memory.md
    python bench/memory.py --part real    # or --part sim, --only wan13,animatediff (merged into the JSON)
    python bench/memory.py --report-only  # re-render memory.md from memory.json (bench/results_io.py)

memory.md also quotes the measured CUDA figures of bench/results/gpu_check.json and gpu_pipeline.json (read
when rendering, never copied).
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

GiB = 1024 ** 3
MiB = 1024 ** 2
NAME = "memory"

WAN_13B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
               text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
               qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
WAN_14B = dict(WAN_13B, num_attention_heads=40, ffn_dim=13824, num_layers=40)


# ----------------------------------------------------------------------------------------------- models
def _zero_to_random(model) -> None:
    """Motion modules / temporal convs are zero-initialised (identity); give them weights so they count."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() and not isinstance(p, torch._subclasses.fake_tensor.FakeTensor) and p.abs().max() == 0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)


def wan_model(cfg: dict):
    from diffusers import WanTransformer3DModel

    model = WanTransformer3DModel(**cfg).eval()
    # as from_pretrained keeps them (_keep_in_fp32_modules): the rotary tables in fp32
    model.rope.freqs_cos = model.rope.freqs_cos.float()
    model.rope.freqs_sin = model.rope.freqs_sin.float()
    return model


def wan_inputs(batch, frames, h, w, text_dim, dtype, text_len=512):
    return dict(hidden_states=torch.randn(batch, 16, frames, h, w, dtype=dtype),
                timestep=torch.tensor([500] * batch), encoder_hidden_states=torch.randn(batch, text_len, text_dim,
                                                                                       dtype=dtype),
                return_dict=False)


def animatediff_model(unet_kwargs: dict, adapter_kwargs: dict):
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    unet = UNet2DConditionModel(**unet_kwargs)
    adapter = MotionAdapter(**adapter_kwargs)
    adapter.to = lambda *a, **k: adapter  # from_unet2d moves the adapter; a no-op here (fake tensors can't)
    return UNetMotionModel.from_unet2d(unet, adapter, load_weights=False).eval()


def animatediff_inputs(batch, frames, h, w, ctx_dim, dtype, text_len=77):
    return dict(sample=torch.randn(batch, 4, frames, h, w, dtype=dtype), timestep=torch.tensor(500),
                encoder_hidden_states=torch.randn(batch * frames, text_len, ctx_dim, dtype=dtype), return_dict=False)


def i2vgen_model(kwargs: dict):
    from diffusers import I2VGenXLUNet

    return I2VGenXLUNet(**kwargs).eval()


def i2vgen_inputs(batch, frames, h, w, ctx_dim, dtype, text_len=77):
    return dict(sample=torch.randn(batch, 4, frames, h, w, dtype=dtype), timestep=torch.tensor(500),
                fps=torch.tensor([16] * batch), image_latents=torch.randn(batch, 4, frames, h, w, dtype=dtype),
                image_embeddings=torch.randn(batch, 1024 if ctx_dim == 1024 else ctx_dim, dtype=dtype),
                encoder_hidden_states=torch.randn(batch, text_len, ctx_dim, dtype=dtype), return_dict=False)


# ------------------------------------------------------------------------------------------ measurement
def peak(model, kwargs) -> int:
    from vidrt_dev.counting import peak_activation_bytes

    with torch.no_grad(), peak_activation_bytes() as pk:
        model(**kwargs)
    return pk.peak


def timed(model, kwargs, repeats=2) -> tuple[float, torch.Tensor]:
    times, out = [], None
    with torch.no_grad():
        for _ in range(repeats):
            t = time.perf_counter()
            out = model(**kwargs)[0]
            times.append(time.perf_counter() - t)
    return min(times), out


def compare(model, kwargs, real: bool, chunks: dict | None = None) -> dict:
    from vidrt.engine.slicing import SlicingConfig, disable_slicing, enable_slicing

    chunks = chunks or {}
    row = {"unsliced_bytes": peak(model, kwargs)}
    if real:
        row["unsliced_s"], ref = timed(model, kwargs)
    summary = enable_slicing(model, **chunks)
    try:
        row["sliced_bytes"] = peak(model, kwargs)
        if real:
            row["sliced_s"], out = timed(model, kwargs)
            row["max_abs_diff"] = float((out - ref).abs().max())
            row["time_ratio"] = row["sliced_s"] / row["unsliced_s"]
    finally:
        disable_slicing(model)
    row["ratio"] = row["unsliced_bytes"] / row["sliced_bytes"]
    row["chunks"] = {k: v for k, v in summary.items() if k.startswith("chunk_")}
    if not real:    # what `auto` picks on an accelerator (larger floors: a GPU kernel needs rows to hide launches)
        enable_slicing(model, SlicingConfig(accelerator=True))
        try:
            row["sliced_accelerator_bytes"] = peak(model, kwargs)
        finally:
            disable_slicing(model)
        row["ratio_accelerator"] = row["unsliced_bytes"] / row["sliced_accelerator_bytes"]
    return row


# ---------------------------------------------------------------------------------------------- part 1
def real_cases():
    f32 = torch.float32
    yield "wan", "Wan DiT 2 blocks, 4x64 heads, ffn 1024; latents 16x32x32 (4096 tokens)", \
        lambda: (wan_model(dict(WAN_13B, num_attention_heads=4, attention_head_dim=64, text_dim=64, ffn_dim=1024,
                                num_layers=2, freq_dim=64)),
                 wan_inputs(1, 16, 32, 32, 64, f32, text_len=32))
    yield "animatediff", "UNetMotionModel (32,64) ch, CFG batch 2 x 16 frames, latents 32x32 (256 px)", \
        lambda: (animatediff_model(dict(block_out_channels=(32, 64), layers_per_block=2, cross_attention_dim=64,
                                        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=8,
                                        attention_head_dim=8),
                                   dict(block_out_channels=(32, 64), motion_layers_per_block=2,
                                        motion_norm_num_groups=8, motion_num_attention_heads=4)),
                 animatediff_inputs(2, 16, 32, 32, 64, f32, text_len=16))
    yield "i2vgen-xl", "I2VGenXLUNet (32,64) ch, CFG batch 2 x 16 frames, latents 32x32 (256 px)", \
        lambda: (i2vgen_model(dict(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=64,
                                   down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                                   up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), attention_head_dim=8,
                                   num_attention_heads=None, norm_num_groups=8)),
                 i2vgen_inputs(2, 16, 32, 32, 64, f32, text_len=16))


def run_real(only=None) -> dict:
    torch.manual_seed(0)
    out = {}
    for key, desc, build in real_cases():
        if only and key not in only:
            continue
        model, kwargs = build()
        _zero_to_random(model)
        t = time.time()
        row = compare(model, kwargs, real=True)
        row["desc"] = desc
        out[key] = row
        print(f"[real] {key}: {row['unsliced_bytes'] / MiB:.1f} -> {row['sliced_bytes'] / MiB:.1f} MiB "
              f"({row['ratio']:.2f}x), time x{row['time_ratio']:.2f}, diff {row['max_abs_diff']:.1e} "
              f"[{time.time() - t:.0f}s]", flush=True)
    return out


# ---------------------------------------------------------------------------------------------- part 2
def sim_cases():
    bf16, f16 = torch.bfloat16, torch.float16
    yield "wan13", "Wan 2.1 1.3B transformer, 81x480x832, bf16, one forward (no CFG)", bf16, \
        lambda: (wan_model(dict(WAN_13B, num_layers=2)), wan_inputs(1, 21, 60, 104, 4096, bf16))
    yield "wan14", "Wan 2.1 14B transformer, 81x720x1280, bf16, one forward (no CFG)", bf16, \
        lambda: (wan_model(dict(WAN_14B, num_layers=2)), wan_inputs(1, 21, 90, 160, 4096, bf16))
    yield "animatediff", "AnimateDiff (SD1.5 UNet + MotionAdapter v1-5-2 defaults), 16x512x512, fp16, CFG batch 2", \
        f16, lambda: (animatediff_model(dict(cross_attention_dim=768), {}),
                      animatediff_inputs(2, 16, 64, 64, 768, f16))
    yield "i2vgen", "I2VGen-XL UNet (defaults), 16x512x512, fp16, CFG batch 2", f16, \
        lambda: (i2vgen_model({}), i2vgen_inputs(2, 16, 64, 64, 1024, f16))


def run_sim(only=None) -> dict:
    from torch._subclasses.fake_tensor import FakeTensorMode

    out = {}
    for key, desc, dtype, build in sim_cases():
        if only and key not in only:
            continue
        t = time.time()
        with FakeTensorMode():
            old = torch.get_default_dtype()
            torch.set_default_dtype(dtype)
            try:
                model, kwargs = build()
            finally:
                torch.set_default_dtype(old)
            row = compare(model, kwargs, real=False)
        row["desc"] = desc
        row["sim_s"] = time.time() - t
        out[key] = row
        print(f"[sim] {key}: {row['unsliced_bytes'] / GiB:.3f} -> {row['sliced_bytes'] / GiB:.3f} GiB "
              f"({row['ratio']:.2f}x), accelerator floors {row['sliced_accelerator_bytes'] / GiB:.3f} GiB "
              f"[{row['sim_s']:.0f}s]", flush=True)
    return out


# ---------------------------------------------------------------------------------------------- report
# goals of the slicing work (issue 2), checked against the data when rendering
TARGET_WAN13_SLICED_GIB = 0.35
TARGET_ANIMATEDIFF_RATIO = 3.5
TARGET_I2VGEN_RATIO = 3.0
TARGET_CPU_TIME_RATIO = 1.10
TARGET_PIPE_AD_RESIDENT = 2.5          # AnimateDiff whole pipeline, weights resident: x lower than diffusers
TARGET_PIPE_AD_GROUP = 8.0             # ... with group offloading
PUBLISHED_PIPE_AD_BAR = 3.8            # Streamlined Inference's published reduction for AnimateDiff
TARGET_PIPE_WAN_GIB = 3.0              # Wan 1.3B whole pipeline
GPU_CHECK_CASES = {"wan13": "wan_13b", "animatediff": "animatediff", "i2vgen": "i2vgen"}


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _runs_text(data: dict) -> list[str]:
    runs = data.get("runs", [])
    if len(runs) <= 1:
        return []
    return ["Rows come from several runs (column *run*):", "",
            *[f"{i + 1}. {rio.describe_run(m)}" for i, m in enumerate(runs)], ""]


def _gpu_check_rows(gpu_check: dict | None) -> dict:
    """The latest measured row of each gpu_check case: {case: (row, run)}."""
    out: dict = {}
    for run in (gpu_check or {}).get("runs", []):
        for row in run.get("rows", []):
            if row.get("case") and "unsliced_gib" in row:
                out[row["case"]] = (row, run)
    return out


def _pipeline_section(pipe: dict | None) -> list[str]:
    if not pipe:
        return []
    rows = [r for run in pipe.get("runs", []) for r in run.get("rows", [])]
    cases: dict[str, dict[str, dict]] = {}
    for r in rows:
        cases.setdefault(r["case"], {})[r["variant"]] = r
    gpus = sorted({run["machine"].get("gpu") or "?" for run in pipe.get("runs", [])})
    lines = [f"## 3. Whole pipelines, real {', '.join(gpus)} (weights + activations, `bench/gpu_pipeline.py`, "
             "[gpu_pipeline.md](gpu_pipeline.md))", "",
             "| pipeline | diffusers `pipe(...)` all on GPU | vidrt, weights resident | vidrt, group offload |",
             "|---|---|---|---|"]
    found: dict[str, tuple] = {}
    for case, variants in cases.items():
        base = variants.get("diffusers")
        res = next((v for k, v in variants.items() if k.startswith("vidrt, weights resident")), None)
        grp = next((v for k, v in variants.items() if k.startswith("vidrt, group offload")), None)
        if not (base and res and grp) or "peak_gib" not in res or "peak_gib" not in grp:
            continue
        found[case] = (base, res, grp)
        lines.append(f"| {case} | {base['peak_gib']:.2f} GiB | {res['peak_gib']:.2f} GiB ({res['lower']:.2f}x lower) | "
                     f"{grp['peak_gib']:.2f} GiB ({grp['lower']:.2f}x lower) |")
    lines.append("")
    ad = next((v for k, v in found.items() if k.startswith("AnimateDiff")), None)
    wan = next((v for k, v in found.items() if k.startswith("Wan")), None)
    targets = []
    if ad:
        targets.append(f"AnimateDiff whole pipeline >= {TARGET_PIPE_AD_RESIDENT:g}x lower without offload: "
                       f"{ad[1]['lower']:.2f}x -> {_met(ad[1]['lower'] >= TARGET_PIPE_AD_RESIDENT)}; >= "
                       f"{TARGET_PIPE_AD_GROUP:g}x with group offloading: {ad[2]['lower']:.2f}x -> "
                       f"{_met(ad[2]['lower'] >= TARGET_PIPE_AD_GROUP)} (Streamlined Inference's published bar: "
                       f"{PUBLISHED_PIPE_AD_BAR:g}x)")
    if wan:
        targets.append(f"Wan 1.3B whole pipeline <= {TARGET_PIPE_WAN_GIB:g} GiB: {wan[2]['peak_gib']:.2f} GiB with "
                       f"group offload -> {_met(wan[2]['peak_gib'] <= TARGET_PIPE_WAN_GIB)}; with the weights "
                       f"resident {wan[1]['peak_gib']:.2f} GiB")
    if targets:
        lines += ["Targets: " + "; ".join(targets) + ".", ""]
    return lines


def render(data: dict, gpu_check: dict | None = None, pipe: dict | None = None) -> str:
    many = len(data.get("runs", [])) > 1
    floors = data.get("floors", {})
    cpu_f, acc_f = floors.get("cpu", {}), floors.get("accelerator", {})
    lines = ["# Feature slicer: memory benchmark", "", rio.provenance("bench/memory.py", NAME, data), "",
             "Peak activation bytes = high-water mark of tensor storages created during one denoiser forward",
             "(parameters and inputs excluded), counted by a TorchDispatchMode (`vidrt_dev/counting.py`).",
             "Chunk sizes: `auto` (chunk_frames / chunk_tokens / chunk_positions = None)"
             + (f"; on the CPU at least {cpu_f['elements']} input elements and {cpu_f['tokens']} tokens per chunk, "
                f"on an accelerator at least {acc_f['elements']} and {acc_f['tokens']}." if cpu_f and acc_f else "."),
             "", *_runs_text(data)]
    real = data.get("real", {})
    run_col = (" run |", "---|") if many else ("", "")
    if real:
        lines += ["## 1. Real runs at bench shapes (CPU, fp32, random weights; wall time best of 2)", "",
                  "| family | model / shape | unsliced | sliced | ratio | wall time sliced/unsliced | max abs diff |"
                  + run_col[0], "|---|---|---|---|---|---|---|" + run_col[1]]
        for key, r in real.items():
            lines.append(f"| {key} | {r['desc']} | {r['unsliced_bytes'] / MiB:.1f} MiB | "
                         f"{r['sliced_bytes'] / MiB:.1f} MiB | {r['ratio']:.2f}x | {r['time_ratio']:.2f}x "
                         f"({r['unsliced_s']:.2f} s -> {r['sliced_s']:.2f} s) | {r['max_abs_diff']:.1e} |"
                         + (f" {r.get('run', 0) + 1} |" if many else ""))
        lines.append("")
    sim = data.get("sim", {})
    if sim:
        lines += ["## 2. Full size, simulated (FakeTensorMode, fake CPU tensors, reported as accelerator bytes)", "",
                  "| case | unsliced | sliced, CPU floors | ratio | sliced, accelerator floors | ratio | simulation time |"
                  + run_col[0], "|---|---|---|---|---|---|---|" + run_col[1]]
        for r in sim.values():
            acc = (f"{r['sliced_accelerator_bytes'] / GiB:.3f} GiB | {r['ratio_accelerator']:.2f}x"
                   if "sliced_accelerator_bytes" in r else " | ")
            lines.append(f"| {r['desc']} | {r['unsliced_bytes'] / GiB:.3f} GiB | {r['sliced_bytes'] / GiB:.3f} GiB | "
                         f"{r['ratio']:.2f}x | {acc} | {r['sim_s']:.0f} s |" + (f" {r.get('run', 0) + 1} |" if many else ""))
        lines.append("")
        measured = _gpu_check_rows(gpu_check)
        quoted = []
        for key, case in GPU_CHECK_CASES.items():
            if key in sim and case in measured:
                row, run = measured[case]
                s = sim[key]
                quoted.append(f"{row['name']}: measured {row['unsliced_gib']:.3f} -> {row['sliced_gib']:.3f} GiB "
                              f"({row['ratio']:.2f}x) on {run['machine'].get('gpu')} ({run['label']}, {run['date']}); "
                              f"simulated here {s['unsliced_bytes'] / GiB:.3f} -> {s['sliced_bytes'] / GiB:.3f} GiB")
        if quoted:
            lines += ["Real CUDA peaks of the same shapes ([gpu_check.md](gpu_check.md), the latest run of each case; "
                      "those runs predate the accelerator floors, so they compare with the CPU-floor column):", "",
                      *[f"- {q}" for q in quoted], ""]
    lines += _pipeline_section(pipe)
    lines += ["## Targets", ""]
    if "wan13" in sim:
        w = sim["wan13"]["sliced_bytes"] / GiB
        lines.append(f"- Wan 1.3B sliced per-forward activations <= {TARGET_WAN13_SLICED_GIB:g} GiB: {w:.3f} GiB "
                     f"-> {_met(w <= TARGET_WAN13_SLICED_GIB)}"
                     + (f" (accelerator floors: {sim['wan13']['sliced_accelerator_bytes'] / GiB:.3f} GiB)"
                        if "sliced_accelerator_bytes" in sim["wan13"] else ""))
    for key, name, bar in (("animatediff", "AnimateDiff", TARGET_ANIMATEDIFF_RATIO),
                           ("i2vgen", "I2VGen-XL", TARGET_I2VGEN_RATIO)):
        if key in sim:
            r = sim[key]["ratio"]
            lines.append(f"- {name} >= {bar:g}x lower: {r:.2f}x -> {_met(r >= bar)}"
                         + (f" (accelerator floors: {sim[key]['ratio_accelerator']:.2f}x)"
                            if "ratio_accelerator" in sim[key] else ""))
    if real:
        ratios = [r["time_ratio"] for r in real.values()]
        within = [k for k, r in real.items() if r["time_ratio"] <= TARGET_CPU_TIME_RATIO]
        lines.append(f"- sliced/unsliced wall time <= {TARGET_CPU_TIME_RATIO:.2f}x on CPU at bench shapes: "
                     + ", ".join(f"{k} {r['time_ratio']:.2f}x" for k, r in real.items())
                     + f" (mean {sum(ratios) / len(ratios):.2f}x) -> met by {len(within)} of {len(ratios)}")
    lines += ["- See docs/SLICING.md for what is carried un-sliced (and what reaching 0.25 GiB on Wan 1.3B takes).", ""]
    notes = list(data.get("notes", []))
    if real and sim:
        lo, hi = min(r["ratio"] for r in real.values()), max(r["ratio"] for r in real.values())
        slo, shi = min(r["ratio"] for r in sim.values()), max(r["ratio"] for r in sim.values())
        notes.append(f"Bench-shape memory ratios ({lo:.2f}x-{hi:.2f}x) are lower than at full size ({slo:.2f}x-"
                     f"{shi:.2f}x) because the automatic chunk floors leave only a few chunks per op at these small "
                     "shapes.")
    if notes:
        lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(lines)


NOTES = [
    "Wall times are single forwards (best of 2) on the machine named above; on a shared machine they vary from "
    "run to run, so a sliced/unsliced ratio near 1 is within the noise (rerun `python bench/memory.py --part real` "
    "on a quiet machine to check the wall-time target).",
    "Full-size Wan is built with 2 of its 30/40 identical blocks (the peak is reached inside one block; a 2-block "
    "and a 30-block unsliced Wan 1.3B measure the same peak).",
]


def floors() -> dict:
    from vidrt.engine.slicing.auto import MIN_CHUNK_ELEMENTS, MIN_CHUNK_TOKENS

    return {name: {"elements": MIN_CHUNK_ELEMENTS[acc], "tokens": MIN_CHUNK_TOKENS[acc]}
            for name, acc in (("cpu", False), ("accelerator", True))}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=["real", "sim", "all"], default="all")
    ap.add_argument("--only", default="", help="comma-separated case keys")
    ap.add_argument("--threads", type=int, default=0)
    rio.add_output_args(ap, NAME)
    args = ap.parse_args(argv)
    out_md = args.out / f"{NAME}.md"
    if args.report_only:
        data = rio.read_json(rio.source_json(args, NAME))
        rio.write_text(out_md, render(data, rio.committed("gpu_check"), rio.committed("gpu_pipeline")))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    only = set(filter(None, args.only.split(",")))
    store = args.out / f"{NAME}.json"
    partial = bool(only) or args.part != "all"
    data = rio.read_json(store) if partial and store.is_file() else {}
    runs = data.get("runs", [])
    run = len(runs)
    if args.part in ("real", "all"):
        rows = run_real(only)
        for row in rows.values():
            row["run"] = run
        data.setdefault("real", {}).update(rows)
    if args.part in ("sim", "all"):
        rows = run_sim(only)
        for row in rows.values():
            row["run"] = run
        data.setdefault("sim", {}).update(rows)
    meta = rio.metadata(argv)   # after the run: torch is imported, the machine is complete
    data = {**meta, **{k: v for k, v in data.items() if k not in meta}}
    data["runs"] = [*runs, meta]
    used = {r.get("run", 0) for part in ("real", "sim") for r in data.get(part, {}).values()}
    data["runs"] = [m for i, m in enumerate(data["runs"]) if i in used]
    remap = {old: new for new, old in enumerate(sorted(used))}
    for part in ("real", "sim"):
        for r in data.get(part, {}).values():
            r["run"] = remap[r.get("run", 0)]
    data["floors"] = floors()
    data["notes"] = NOTES
    rio.write_json(store, data)
    rio.write_text(out_md, render(data, rio.committed("gpu_check"), rio.committed("gpu_pipeline")))


if __name__ == "__main__":
    main()
