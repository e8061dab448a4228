"""Long videos on a lent GPU: accelerator peaks per stage at 1x and 4x the native frame count, with the
sampling loop's full-length tensors on the host (`long.loop_on_host: true`, the default on accelerators) vs on
the device. Random weights (Wan 2.1 T2V 1.3B from vidrt/models/known_configs, built as in bench/gpu_pipeline.py):
memory needs no training.

    PYTHONUNBUFFERED=1 python bench/gpu_long.py          # writes $OUT/gpu_long.md (or bench/results/)
    python bench/gpu_long.py --tiny                      # the same code path on a tiny Wan on the CPU

Each run is `vidrt.render` on the pipeline: 480x832, 2 steps, CFG 5, bf16, context windows of the native 81
frames (1/4 overlap), group offload (weights streamed, so the peak is activations + what the loop keeps) and
tiled VAE decode, one tile at a time through the host (`--vae-tiling off`: the untiled decode, one latent frame
at a time, into gpu_long_streamed.md). The simulated counterpart is vidrt/memory/simulate_long.py (bench/results/long_video.md).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from gpu_pipeline import GiB, vidrt_render, wan_pipe  # noqa: E402
from long_video import frames_for  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny Wan, small frames, CPU (a dry run of this script)")
    ap.add_argument("--mults", default="1,4", help="multiples of the native frame count")
    ap.add_argument("--vae-tiling", default="on", choices=["on", "off"],
                    help="on: diffusers' tiled decoder (auto picks it from 720x1280 up); off: vidrt's streamed decode")
    ap.add_argument("--loop", default="host,device", help="where the loop's tensors live: host, device or both")
    ap.add_argument("--steps", type=int, default=2)
    args = ap.parse_args()
    device = torch.device("cpu" if args.tiny else "cuda")
    dtype, dtype_name = (torch.float32, "float32") if args.tiny else (torch.bfloat16, "bfloat16")
    h, w = (32, 32) if args.tiny else (480, 832)
    workdir = Path(tempfile.mkdtemp(prefix="vidrt-gpu-long-"))
    (workdir / "model_index.json").write_text("{}")

    from vidrt.models import get_adapter

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
            try:
                peak, secs, stages, _ = vidrt_render(pipe, "wan", shape, memory, device, workdir, dtype_name)
            except Exception as exc:         # one failing run must not cost the others their (lent, timed) run
                traceback.print_exc()
                rows.append(f"| {label} | failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]} | | | |")
                continue
            print(f"{label}: peak {peak / GiB:.3f} GiB, {secs:.1f} s, stages "
                  + ", ".join(f"{k} {v / GiB:.3f}" for k, v in stages.items()), flush=True)
            rows.append(f"| {label} | {stages.get('denoise', 0) / GiB:.3f} | {stages.get('vae_decode', 0) / GiB:.3f} | "
                        f"{peak / GiB:.3f} | {secs:.1f} |")
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (--tiny dry run)"
    text = [f"# Long videos on {dev} (torch {torch.__version__}), bench/gpu_long.py", "",
            f"Wan 2.1 T2V 1.3B, random weights, {h}x{w}, native {native} frames, {args.steps} steps, CFG 5, "
            f"{dtype_name}, context windows of the native length (1/4 overlap), group offload, "
            + ("tiled VAE decode (diffusers' tiles, decoded one at a time and blended on the host: "
               "vidrt.engine.slicing.vae.tiled_decode_via_host)" if args.vae_tiling == "on"
               else "untiled streamed VAE decode (one latent frame at a time)") + ". Peaks are "
            "torch.cuda.max_memory_allocated per stage (vidrt's tracker), weights streamed.", "",
            "| run | denoise peak GiB | VAE decode peak GiB | run peak GiB | s |", "|---|---|---|---|---|", *rows, ""]
    name = ("gpu_long_tiny" if args.tiny else "gpu_long") + ("" if args.vae_tiling == "on" else "_streamed")
    out = Path(os.environ.get("OUT") or ROOT / "bench" / "results") / f"{name}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
