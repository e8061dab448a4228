"""Long videos on a lent GPU: accelerator peaks per stage at 1x and 4x the native frame count, with the
sampling loop's full-length tensors on the host (`long.loop_on_host: true`, the default on accelerators) vs on
the device. Random weights (Wan 2.1 T2V 1.3B from vidrt/models/known_configs, built as in bench/gpu_pipeline.py):
memory needs no training.

    PYTHONUNBUFFERED=1 python bench/gpu_long.py       # writes bench/results/gpu_long.json, renders .md
    python bench/gpu_long.py --vae-tiling off         # gpu_long_streamed.json / .md
    python bench/gpu_long.py --tiny                   # the same code path on a tiny Wan on the CPU (*_tiny*)
    python bench/gpu_long.py --report-only [--vae-tiling off]   # re-render the .md from the JSON (no GPU)

Each run is `vidrt.render` on the pipeline: 480x832, 2 steps, CFG 5, bf16, context windows of the native 81
frames (1/4 overlap), group offload (weights streamed, so the peak is activations + what the loop keeps) and
tiled VAE decode, one tile at a time through the host (`--vae-tiling off`: the untiled decode, one latent frame
at a time, into gpu_long_streamed.md). The simulated counterpart is vidrt/memory/simulate/long.py
(bench/results/long_video.md).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import results_io as rio  # noqa: E402

GiB = 2 ** 30
VAE = {"on": "tiled VAE decode (diffusers' tiles, decoded one at a time and blended on the host: "
             "vidrt.models.wan_vae.tiled_decode_via_host)",
       "off": "untiled streamed VAE decode (one latent frame at a time)"}


def render(data: dict, name: str) -> str:
    extra = (" --tiny" if "_tiny" in name else "") + (" --vae-tiling off" if name.endswith("_streamed") else "")
    lines = ["# Long videos on a lent GPU (bench/gpu_long.py)", "",
             rio.provenance("bench/gpu_long.py", name, data, extra), ""]
    prev = None
    for run in data["runs"]:
        c = run["settings"]
        lines += [*rio.run_heading(run),
                  f"{c['model']}, {c['height']}x{c['width']}, native {c['native']} frames, {c['steps']} steps, "
                  f"CFG {c['guidance']:g}, {c['dtype']}, context windows of the native length (1/4 overlap), group "
                  f"offload, {c['vae']}. Peaks are torch.cuda.max_memory_allocated per stage (vidrt's tracker), "
                  "weights streamed.", "",
                  "| run | denoise peak GiB | VAE decode peak GiB | run peak GiB | s |", "|---|---|---|---|---|"]
        for r in run["rows"]:
            if "error" in r:
                lines.append(f"| {r['label']} | failed: {r['error']} | | | |")
            else:
                lines.append(f"| {r['label']} | {r['denoise_gib']:.3f} | {r['vae_decode_gib']:.3f} | "
                             f"{r['peak_gib']:.3f} | {r['seconds']:.1f} |")
        lines.append("")
        if prev is not None:
            before = {r["label"]: r for r in prev["rows"] if "error" not in r}
            changes = [f"{r['label']}: VAE decode {before[r['label']]['vae_decode_gib']:.3f} -> "
                       f"{r['vae_decode_gib']:.3f} GiB, denoise {before[r['label']]['denoise_gib']:.3f} -> "
                       f"{r['denoise_gib']:.3f} GiB" for r in run["rows"] if r.get("label") in before and "error" not in r]
            if changes:
                lines += [f"Against {prev['label'].lower()} (computed): " + "; ".join(changes) + ".", ""]
        lines += rio.notes_block(run.get("notes", []), rio.RUN_NOTES)
        prev = run
    lines += rio.notes_block(data.get("notes", []))
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny Wan, small frames, CPU (a dry run of this script)")
    ap.add_argument("--mults", default="1,4", help="multiples of the native frame count")
    ap.add_argument("--vae-tiling", default="on", choices=["on", "off"],
                    help="on: diffusers' tiled decoder (auto picks it from 720x1280 up); off: vidrt's streamed decode")
    ap.add_argument("--loop", default="host,device", help="where the loop's tensors live: host, device or both")
    ap.add_argument("--steps", type=int, default=2)
    rio.add_run_args(ap, "gpu_long")
    args = ap.parse_args(argv)
    name = ("gpu_long_tiny" if args.tiny else "gpu_long") + ("" if args.vae_tiling == "on" else "_streamed")
    if args.report_only:
        rio.write_text(args.out / f"{name}.md", render(rio.read_json(rio.source_json(args, name)), name))
        return
    if not args.tiny:
        rio.check_cuda("bench/gpu_long.py (use --tiny for a CPU dry run)")
    import torch
    from gpu_pipeline import vidrt_render, wan_pipe
    from long_video import frames_for

    from vidrt.models import get_adapter

    device = torch.device("cpu" if args.tiny else "cuda")
    dtype, dtype_name = (torch.float32, "float32") if args.tiny else (torch.bfloat16, "bfloat16")
    h, w = (32, 32) if args.tiny else (480, 832)
    workdir = Path(tempfile.mkdtemp(prefix="vidrt-gpu-long-"))
    (workdir / "model_index.json").write_text("{}")

    adapter = get_adapter("wan")
    pipe = wan_pipe(dtype, device, args.tiny)
    native = adapter.native_frame_count(pipe)
    pipe.to("cpu")                                  # group offloading streams the weights from the host
    memory = dict(slicing="auto", vae_tiling=args.vae_tiling, offload="group")
    rows = []
    for mult in (int(m) for m in args.mults.split(",")):
        frames = frames_for(adapter, native, mult)
        for on_host in (where == "host" for where in args.loop.split(",")):
            shape = dict(frames=frames, height=h, width=w, steps=args.steps, guidance=5.0,
                         long=dict(loop_on_host=on_host))
            label = f"{mult}x ({frames} frames), loop on {'host' if on_host else 'device'}"
            row = {"label": label, "mult": mult, "frames": frames, "loop": "host" if on_host else "device"}
            try:
                t0 = time.perf_counter()
                peak, secs, stages, _ = vidrt_render(pipe, "wan", shape, memory, device, workdir, dtype_name)
            except Exception as exc:  # noqa: BLE001 - one failing run must not cost the others their (lent) run
                traceback.print_exc()
                rows.append({**row, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}",
                             "seconds": time.perf_counter() - t0})
                continue
            rows.append({**row, "denoise_gib": stages.get("denoise", 0) / GiB,
                         "vae_decode_gib": stages.get("vae_decode", 0) / GiB, "peak_gib": peak / GiB,
                         "seconds": secs, "stages_gib": {k: v / GiB for k, v in stages.items()}})
            print(rows[-1], flush=True)
    settings = {"model": "Wan 2.1 T2V 1.3B, random weights", "height": h, "width": w, "native": native,
                "steps": args.steps, "guidance": 5.0, "dtype": dtype_name, "vae": VAE[args.vae_tiling]}
    data = rio.save_run(args, name, argv, settings=settings, rows=rows)
    text = render(data, name)
    rio.write_text(args.out / f"{name}.md", text)
    print(text)


if __name__ == "__main__":
    main()
