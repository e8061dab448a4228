"""fp8 weight storage (vidrt.engine.weights) on the shipped sample model: what it does to the video, and what it
saves at full size.

Part 1 (real, CPU): samples/tiny-wan renders the same (grammar prompt, seed) cases with the transformer's
weights native and stored in fp8, each compute dtype against its own native run:

- fp32 compute: native fp32 | fp8 e4m3 storage | fp8 e5m2 storage;
- bf16 compute (the transformer loaded in bf16 as `from_pretrained(torch_dtype=bfloat16)` loads it, the text
  encoder and VAE in fp32): native bf16 | fp8 e4m3 storage.

Per variant: PSNR (dB, frames in [0, 1]) and the max / mean absolute pixel difference (0-255 levels) against
the fp32 native frames and against the native frames of the same compute dtype; the sample-quality attribute
metrics of bench/sample_quality.py (object colour, background colour, motion direction agree with the prompt;
mean direction cosine) and how often the detected colour and direction equal the native render's; seconds per
video. Also how much fp8 rounds the sample transformer's cast weights (relative L2, share below fp8's normal
range, share flushed to zero).

Part 2 (simulated, full size): the Wan 2.1 1.3B and 14B transformers built from their hub configs on the meta
device in bf16 (every parameter bf16, as vidrt's simulator counts them): weight bytes native and with fp8 storage
(`weight_bytes_under_storage`), the layers cast and kept, and one block (the unit group offloading streams).

    python bench/fp8_quality.py [--model samples/tiny-wan] [--n 16] [--steps 25] [--threads 1]
    python bench/fp8_quality.py --report-only     # re-render fp8_quality.md from fp8_quality.json
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import results_io as rio  # noqa: E402
import sample_quality as sq  # noqa: E402

NAME = "fp8_quality"
# label -> (transformer dtype, storage or None, the native variant of the same compute dtype)
VARIANTS = {
    "fp32": ("float32", None, "fp32"),
    "fp8 e4m3 / fp32 compute": ("float32", "fp8", "fp32"),
    "fp8 e5m2 / fp32 compute": ("float32", "fp8_e5m2", "fp32"),
    "bf16": ("bfloat16", None, "bf16"),
    "fp8 e4m3 / bf16 compute": ("bfloat16", "fp8", "bf16"),
}
REFERENCE = "fp32"
FULL_SIZE = ("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "Wan-AI/Wan2.1-T2V-14B-Diffusers")


# ------------------------------------------------------------------------------------------- part 1
def load_variant(path: str, dtype: str):
    import torch
    from diffusers import WanPipeline, WanTransformer3DModel

    transformer = WanTransformer3DModel.from_pretrained(path, subfolder="transformer",
                                                        torch_dtype=getattr(torch, dtype))
    pipe = WanPipeline.from_pretrained(path, transformer=transformer, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def rounding(model, storage: str) -> dict:
    """How fp8 rounds the weights `enable_weight_storage` would cast (relative L2 over all of them)."""
    import torch

    from vidrt.engine.weights import WeightStorageConfig, cast_layers

    cfg = WeightStorageConfig(storage)
    tiny = torch.finfo(cfg.dtype).smallest_normal
    err = norm = 0.0
    n = below = flushed = 0
    for name in cast_layers(model, cfg):
        for p in model.get_submodule(name).parameters():
            w = p.detach().float()
            q = w.to(cfg.dtype).float()
            err += (q - w).pow(2).sum().item()
            norm += w.pow(2).sum().item()
            n += w.numel()
            below += (w.abs() < tiny).sum().item()
            flushed += ((q == 0) & (w != 0)).sum().item()
    return {"relative_l2": (err / norm) ** 0.5, "below_normal": below / n, "flushed_to_zero": flushed / n,
            "smallest_normal": tiny, "weights": n}


def compare(a: np.ndarray, b: np.ndarray) -> dict:
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    mse = float((d ** 2).mean())
    return {"psnr": None if mse == 0 else float(10 * np.log10(1.0 / mse)), "max_abs": float(d.max() * 255),
            "mean_abs": float(d.mean() * 255)}


def run_part1(args) -> dict:
    import torch

    from vidrt.core.tensors import module_bytes
    from vidrt.engine.weights import WeightStorageConfig, enable_weight_storage

    torch.set_num_threads(args.threads)
    meta = rio.read_json(Path(args.model) / "vidrt.json")
    shape = dict(frames=meta["native_frames"], height=meta["height"], width=meta["width"])
    prompts = sq.bench_prompts(args.n)
    seeds = [args.seed + i for i in range(args.n)]
    videos, rows, timing, storage = {}, {}, {}, {}
    for label, (dtype, fmt, _) in VARIANTS.items():
        pipe = load_variant(args.model, dtype)
        if fmt is not None:
            summary = enable_weight_storage(pipe, WeightStorageConfig(fmt))["models"]["transformer"]
        else:
            summary = {"layers_cast": 0, "bytes_after": module_bytes([pipe.transformer])}
        storage[label] = {"layers_cast": summary["layers_cast"], "transformer_bytes": summary["bytes_after"]}
        t0 = time.time()
        videos[label] = [sq.render(pipe, pr, steps=args.steps, guidance=args.guidance, seed=s, **shape)
                         for pr, s in zip(prompts, seeds)]
        timing[label] = (time.time() - t0) / len(prompts)
        rows[label] = [sq.measure(v, pr) for v, pr in zip(videos[label], prompts)]
        print(f"{label}: {timing[label]:.2f} s/video", flush=True)
    fp32 = load_variant(args.model, "float32").transformer
    out = {}
    for label, (_, _, native) in VARIANTS.items():
        same = [r["colour"] == n["colour"] and r["direction"] == n["direction"]
                for r, n in zip(rows[label], rows[native])]
        out[label] = {
            "vs_fp32": [compare(v, r) for v, r in zip(videos[label], videos[REFERENCE])],
            "vs_native": [compare(v, r) for v, r in zip(videos[label], videos[native])],
            "native": native,
            "attributes": {m: float(v) for m, v in sq.summarise(rows[label]).items()},
            "same_detection_as_native": float(np.mean(same)),
            "per_case": [{"colour": r["colour"], "direction": r["direction"]} for r in rows[label]],
            "seconds_per_video": timing[label], **storage[label],
        }
    return {"prompts": prompts, "seeds": seeds, "shape": shape, "steps": args.steps, "guidance": args.guidance,
            "threads": args.threads, "model": str(Path(args.model).resolve().relative_to(ROOT))
            if Path(args.model).resolve().is_relative_to(ROOT) else str(args.model),
            "variants": out, "rounding": {s: rounding(fp32, s) for s in ("fp8", "fp8_e5m2")}}


# ------------------------------------------------------------------------------------------- part 2
def run_part2() -> dict:
    import torch
    from diffusers.utils import logging

    from vidrt.engine.weights import WeightStorageConfig, cast_layers, weight_bytes_under_storage
    from vidrt.models.known import build_module, components_from_folder, known_dir

    logging.set_verbosity_error()    # `.to(bf16)` warns about _keep_in_fp32_modules: the simulator's convention
    out = {}
    for model_id in FULL_SIZE:
        comp = components_from_folder(known_dir(model_id))["transformer"]
        with torch.device("meta"):
            model = build_module(comp).to(torch.bfloat16)
        cfg = WeightStorageConfig()
        cast = cast_layers(model, cfg)
        out[model_id] = {
            "params": sum(p.numel() for p in model.parameters()),
            "bf16_bytes": sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]),
            "fp8_bytes": weight_bytes_under_storage(model, cfg),
            "block_bf16_bytes": sum(p.numel() * p.element_size() for p in model.blocks[0].parameters()),
            "block_fp8_bytes": weight_bytes_under_storage(model, cfg, under="blocks.0"),
            "layers_cast": len(cast),
            "layers_total": sum(1 for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv3d,
                                                                              torch.nn.Embedding))),
            "blocks": len(model.blocks),
        }
    return out


# ------------------------------------------------------------------------------------------- report
def _psnr(cases: list[dict]) -> str:
    vals = [c["psnr"] for c in cases]
    if all(v is None for v in vals):
        return "identical"
    finite = [v for v in vals if v is not None]
    return f"{np.mean(finite):.1f} / {min(finite):.1f}" + (f" ({vals.count(None)} identical)" if None in vals else "")


def _diff(cases: list[dict]) -> str:
    return f"{max(c['max_abs'] for c in cases):.1f} / {np.mean([c['mean_abs'] for c in cases]):.2f}"


def render_md(data: dict) -> str:
    n, shape, var = len(data["prompts"]), data["shape"], data["variants"]
    lines = [
        "# fp8 weight storage: quality on the sample model, bytes at full size", "",
        rio.provenance("bench/fp8_quality.py", NAME, data), "",
        f"`{data['model']}`: {n} (grammar prompt, seed) cases, seeds {data['seeds'][0]}..{data['seeds'][-1]}, "
        f"{shape['frames']} frames at {shape['height']}x{shape['width']}, {data['steps']} steps, guidance "
        f"{data['guidance']}, CPU, {data['threads']} thread(s). Storage applies to the transformer "
        "(`enable_weight_storage`, default skip list); text encoder and VAE in fp32. PSNR: mean / worst case over "
        "the cases, frames in [0, 1]; pixel difference: max over all pixels / mean, in 0-255 levels. \"Native\" is "
        "the same compute dtype without fp8 storage.", "",
        "| variant | PSNR vs fp32 (dB) | pixel diff vs fp32 | PSNR vs native (dB) | pixel diff vs native | "
        "colour agreement | background agreement | direction agreement | direction cosine | same colour and "
        "direction as native | transformer weights (MiB) | layers in fp8 | s / video |",
        "|---|" + "---|" * 12,
    ]
    for label, v in var.items():
        a = v["attributes"]
        ref = label == REFERENCE
        native = label == v["native"]
        lines.append(
            f"| {label} | {'-' if ref else _psnr(v['vs_fp32'])} | {'-' if ref else _diff(v['vs_fp32'])} | "
            f"{'-' if native else _psnr(v['vs_native'])} | {'-' if native else _diff(v['vs_native'])} | "
            f"{a['colour agreement']:.3f} | {a['background agreement']:.3f} | {a['direction agreement']:.3f} | "
            f"{a['direction cosine (mean)']:.3f} | {'-' if native else format(v['same_detection_as_native'], '.3f')}"
            f" | {v['transformer_bytes'] / rio.MiB:.2f} | {v['layers_cast']} | {v['seconds_per_video']:.2f} |")
    lines += ["", "How fp8 rounds the sample transformer's cast weights (relative L2 over all of them; fp8 has no "
              "per-tensor scale, so weights below its smallest normal number keep fewer bits):", "",
              "| storage | weights | relative L2 error | below smallest normal | flushed to zero |", "|---|---|---|---|---|"]
    for fmt, r in data["rounding"].items():
        lines.append(f"| {fmt} | {r['weights']} | {r['relative_l2']:.4f} | {r['below_normal']:.3f} "
                     f"(< {r['smallest_normal']:.3g}) | {r['flushed_to_zero']:.4f} |")
    e4 = "fp8 e4m3 / fp32 compute"
    lines += ["", f"Per case ({e4} against fp32): PSNR and detected colour / direction, native -> fp8", "",
              "| prompt | seed | PSNR (dB) | max diff (0-255) | colour | direction |", "|---|---|---|---|---|---|"]
    for i, (pr, seed) in enumerate(zip(data["prompts"], data["seeds"])):
        c, nat, f8 = var[e4]["vs_fp32"][i], var[REFERENCE]["per_case"][i], var[e4]["per_case"][i]
        psnr = "identical" if c["psnr"] is None else f"{c['psnr']:.1f}"
        lines.append(f"| {pr} | {seed} | {psnr} | {c['max_abs']:.1f} | {nat['colour']} -> {f8['colour']} | "
                     f"{nat['direction']} -> {f8['direction']} |")
    lines += ["", "Full size (simulated: the hub configs built on the meta device, every parameter in bf16 as "
              "vidrt's simulator counts them; fp8 e4m3 storage with the default skip list):", "",
              "| transformer | parameters | bf16 (GiB) | fp8 storage (GiB) | saved | layers in fp8 | one block bf16 -> "
              "fp8 (MiB) |", "|---|---|---|---|---|---|---|"]
    for model_id, f in data["full_size"].items():
        lines.append(f"| {model_id} | {f['params'] / 1e9:.3f} B | {f['bf16_bytes'] / rio.GiB:.2f} | "
                     f"{f['fp8_bytes'] / rio.GiB:.2f} | {1 - f['fp8_bytes'] / f['bf16_bytes']:.1%} | "
                     f"{f['layers_cast']} of {f['layers_total']} | {f['block_bf16_bytes'] / rio.MiB:.1f} -> "
                     f"{f['block_fp8_bytes'] / rio.MiB:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sq.add_case_args(ap)
    rio.add_output_args(ap, NAME)
    args = ap.parse_args(argv)
    if args.report_only:
        data = rio.read_json(rio.source_json(args, NAME))
    else:
        data = {**rio.metadata(argv), **run_part1(args), "full_size": run_part2()}
        data["machine"] = rio.machine()       # after torch is imported: names its version
        rio.write_json(args.out / f"{NAME}.json", data)
    table = render_md(data)
    rio.write_text(args.out / f"{NAME}.md", table)
    if not args.report_only:
        print(table)
    return table


if __name__ == "__main__":
    main()
