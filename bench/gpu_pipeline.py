"""Whole-pipeline accelerator peaks (weights + activations), diffusers' default call vs `vidrt.render`, for a
lent GPU. Random weights from the shipped configs (vidrt/models/known_configs): memory needs no training.

    PYTHONUNBUFFERED=1 python bench/gpu_pipeline.py   # writes bench/results/gpu_pipeline.json, renders .md
    python bench/gpu_pipeline.py wan --append         # one case, added to the JSON as a new run
    python bench/gpu_pipeline.py --tiny               # the same code path on tiny models on the CPU (*_tiny.*)
    python bench/gpu_pipeline.py --report-only        # re-render gpu_pipeline.md from the JSON (no GPU)

Cases (2 denoising steps: the peak does not grow with the step count):
- AnimateDiff SD1.5 + motion adapter v1-5-2, 16x512x512 fp16, CFG 7.5: diffusers `pipe(...)` with the whole
  pipeline on the GPU (its default decodes all 16 frames at once), vs vidrt (slicing, per-frame VAE decode,
  text encoder moved off after encoding), vs vidrt with group offloading (block-level weight streaming).
- Wan 2.1 T2V 1.3B, 81x480x832 bf16, CFG 5: the same three. The text encoder is a stand-in: UMT5-XXL's
  width (d_model 4096) with 1 of its 24 layers and a small vocabulary, because a random 5.7 B-parameter
  encoder takes minutes to initialise; vidrt moves it off the GPU after encoding (or streams it), so only
  the `text_encode` stage and the diffusers baseline see it (the real one adds ~10 GiB to both).
Peak = torch.cuda.max_memory_allocated over the whole call, reset right before it; for vidrt, whose tracker
resets the peak at each stage, the largest of the per-stage peaks recorded in the sidecar.
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import results_io as rio  # noqa: E402

NAME = "gpu_pipeline"
KNOWN = ROOT / "vidrt" / "models" / "known_configs"
GiB = 2 ** 30
ROWS: list[dict] = []
STEPS = 2
WAN_TE_LAYERS = 1        # the stand-in text encoder's layers (UMT5-XXL has 24)


def cfg(model: str, sub: str = "", name: str = "config.json") -> dict:
    path = KNOWN / model / sub / name if sub else KNOWN / model / name
    return {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}


# ------------------------------------------------------------------------------------------- pipelines
def animatediff_pipe(dtype, device, tiny: bool):
    from vidrt.models import get_adapter

    if tiny:
        return get_adapter("animatediff").tiny(0).to(device, dtype)
    from diffusers import (AnimateDiffPipeline, AutoencoderKL, DDIMScheduler, MotionAdapter,
                           UNet2DConditionModel, UNetMotionModel)
    from transformers import CLIPTextConfig, CLIPTextModel

    from vidrt.models.tokenizers import word_tokenizer

    sd = "stable-diffusion-v1-5--stable-diffusion-v1-5"
    tokenizer = word_tokenizer(style="clip", model_max_length=77)
    with torch.device(device):
        unet = UNetMotionModel.from_unet2d(UNet2DConditionModel.from_config(cfg(sd, "unet")),
                                           MotionAdapter.from_config(cfg("guoyww--animatediff-motion-adapter-v1-5-2")))
        vae = AutoencoderKL.from_config(cfg(sd, "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig(**cfg(sd, "text_encoder")))
    scheduler = DDIMScheduler.from_config(cfg(sd, "scheduler", "scheduler_config.json"))
    pipe = AnimateDiffPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                               motion_adapter=None, scheduler=scheduler)
    return get_adapter("animatediff").prepare(pipe.to(device, dtype))


def wan_pipe(dtype, device, tiny: bool):
    from vidrt.models import get_adapter

    if tiny:
        return get_adapter("wan").tiny(0).to(device, dtype)
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from vidrt.models.tokenizers import word_tokenizer

    wan = "Wan-AI--Wan2.1-T2V-1.3B-Diffusers"
    tokenizer = word_tokenizer(style="t5", model_max_length=512)
    te_cfg = cfg(wan, "text_encoder")
    te_cfg.update(num_layers=WAN_TE_LAYERS, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                  eos_token_id=tokenizer.eos_token_id)
    with torch.device(device):
        transformer = WanTransformer3DModel.from_config(cfg(wan, "transformer"))
        vae = AutoencoderKLWan.from_config(cfg(wan, "vae"))
        text_encoder = UMT5EncoderModel(UMT5Config(**te_cfg))
    scheduler = UniPCMultistepScheduler.from_config(cfg(wan, "scheduler", "scheduler_config.json"))
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae,
                       scheduler=scheduler)
    pipe = pipe.to(device, dtype)
    transformer.rope.freqs_cos = transformer.rope.freqs_cos.float()
    transformer.rope.freqs_sin = transformer.rope.freqs_sin.float()
    return get_adapter("wan").prepare(pipe)


# ------------------------------------------------------------------------------------------- measuring
def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_of(fn, device) -> tuple[int, float, object]:
    """(peak allocated bytes during fn, seconds, result). On the CPU (--tiny) the peak is vidrt's tracker's."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        t = time.perf_counter()
        out = fn()
        _sync(device)
        return torch.cuda.max_memory_allocated(device), time.perf_counter() - t, out
    from vidrt.memory.tracker import MemoryTracker

    with MemoryTracker("cpu") as mem:
        t = time.perf_counter()
        out = fn()
    return mem.peak_bytes, time.perf_counter() - t, out


def diffusers_default(pipe, call: dict, device):
    def run():
        with torch.no_grad():
            return pipe(**call, output_type="pt").frames

    return peak_of(run, device)


def _count_frames(path, frames, fps, size) -> int:
    """Stand-in for the mp4 writer where imageio-ffmpeg is missing (the lent GPU machine is offline): it
    consumes the decoded frames the same way, so the accelerator-side peak is unchanged."""
    return sum(1 for _ in frames)


def vidrt_render(pipe, family: str, shape: dict, memory: dict, device, workdir: Path, dtype_name: str):
    import importlib.util

    from vidrt.config import RenderConfig
    from vidrt.run import render as runner
    from vidrt.run.render import render

    if importlib.util.find_spec("imageio_ffmpeg") is None:
        runner.write_video = _count_frames

    conf = RenderConfig.model_validate(dict(
        model=dict(family=family, path=str(workdir), dtype=dtype_name), prompt="a red circle moves left",
        negative_prompt="", seed=0, memory=memory, devices=[str(device)],
        output=dict(path=str(workdir / f"{family}.mp4"), fps=8), **shape))
    peak, secs, result = peak_of(lambda: render(conf, pipe=pipe, show_progress=False, checkpoints=False), device)
    stages = {s["name"]: s["peak_bytes"] for s in result.sidecar["stages"]}
    # vidrt's tracker resets the allocator's peak at each stage: the call's peak is the largest stage peak
    return max(peak, *stages.values()), secs, stages, result.sidecar["memory"]


def case(name: str, build, family: str, call: dict, shape: dict, device, dtype, dtype_name: str,
         variants: dict[str, dict], workdir: Path) -> None:
    pipe = build(dtype, device)
    base, secs, frames = diffusers_default(pipe, call, device)
    print(f"{name}: diffusers default {base / GiB:.3f} GiB ({secs:.1f} s, frames {tuple(frames.shape)})", flush=True)
    ROWS.append({"case": name, "variant": "diffusers", "peak_gib": base / GiB, "lower": 1.0, "seconds": secs})
    del frames
    for label, memory in variants.items():
        if memory.get("offload") == "group":
            pipe.to("cpu")  # group offloading streams from host memory
        else:
            pipe.to(device)
        try:
            peak, secs, stages, _ = vidrt_render(pipe, family, shape, memory, device, workdir, dtype_name)
        except Exception as exc:  # noqa: BLE001 - one failing variant must not cost the others their (lent) run
            traceback.print_exc()
            ROWS.append({"case": name, "variant": f"vidrt, {label}", "memory": memory,
                         "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"})
            continue
        print(f"{name}: vidrt {label} {peak / GiB:.3f} GiB ({base / max(peak, 1):.2f}x lower, {secs:.1f} s)", flush=True)
        ROWS.append({"case": name, "variant": f"vidrt, {label}", "memory": memory, "peak_gib": peak / GiB,
                     "lower": base / max(peak, 1), "seconds": secs, "stages": {k: v / GiB for k, v in stages.items()}})
    del pipe
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------- report
def row_line(r: dict) -> str:
    run = "diffusers `pipe(...)`, all on the GPU" if r["variant"] == "diffusers" else r["variant"]
    if "error" in r:
        return f"| {r['case']} | {run} | failed: {r['error']} | | | |"
    stages = ", ".join(f"{k} {v:.3f}" for k, v in r.get("stages", {}).items())
    return f"| {r['case']} | {run} | {r['peak_gib']:.3f} | {r['lower']:.2f}x | {r['seconds']:.1f} | {stages} |"


def render(data: dict, name: str = NAME) -> str:
    lines = ["# Whole-pipeline peaks, diffusers vs vidrt (bench/gpu_pipeline.py)", "",
             rio.provenance("bench/gpu_pipeline.py", name, data, " --tiny" if name.endswith("_tiny") else ""), ""]
    for run in data["runs"]:
        lines += [*rio.run_heading(run),
                  f"Random weights from the shipped configs (vidrt/models/known_configs), {run['steps']} steps, CFG on. "
                  "Peak = max allocated over the whole call (weights + activations). Wan's text encoder is a "
                  f"{run['wan_text_encoder_layers']}-layer stand-in at UMT5-XXL width (see the docstring).", "",
                  "| case | run | peak GiB | lower than diffusers | s | vidrt stage peaks (GiB) |",
                  "|---|---|---|---|---|---|", *[row_line(r) for r in run["rows"]], ""]
        lines += rio.notes_block(run.get("notes", []), rio.RUN_NOTES)
    lines += rio.notes_block(data.get("notes", []))
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny models, small shapes, CPU (a dry run of this script)")
    ap.add_argument("cases", nargs="*", default=["animatediff", "wan"])
    rio.add_run_args(ap, NAME)
    args = ap.parse_args(argv)
    if args.report_only:
        name = f"{NAME}_tiny" if args.tiny else NAME
        rio.write_text(args.out / f"{name}.md", render(rio.read_json(rio.source_json(args, name)), name))
        return
    if not args.tiny:
        rio.check_cuda("bench/gpu_pipeline.py (use --tiny for a CPU dry run)")
    device = torch.device("cpu" if args.tiny else "cuda")
    half, bf16 = (torch.float32, torch.float32) if args.tiny else (torch.float16, torch.bfloat16)
    workdir = Path(tempfile.mkdtemp(prefix="vidrt-gpu-pipeline-"))
    (workdir / "model_index.json").write_text("{}")
    offload = {"slicing": "auto", "vae_tiling": "auto", "offload": "group"}
    resident = {"slicing": "auto", "vae_tiling": "auto", "offload": "none"}
    if "animatediff" in args.cases:
        size, frames = (32, 4) if args.tiny else (512, 16)
        call = dict(prompt="a red circle moves left", negative_prompt="", num_frames=frames, height=size, width=size,
                    num_inference_steps=STEPS, guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(0))
        shape = dict(frames=frames, height=size, width=size, steps=STEPS, guidance=7.5)
        case(f"AnimateDiff {frames}x{size}x{size}", lambda d, dev: animatediff_pipe(d, dev, args.tiny),
             "animatediff", call, shape, device, half, "float32" if args.tiny else "float16",
             {"weights resident": resident, "group offload": offload}, workdir)
    if "wan" in args.cases:
        (h, w, f) = (32, 32, 5) if args.tiny else (480, 832, 81)
        call = dict(prompt="a red circle moves left", negative_prompt="", num_frames=f, height=h, width=w,
                    num_inference_steps=STEPS, guidance_scale=5.0, generator=torch.Generator("cpu").manual_seed(0))
        shape = dict(frames=f, height=h, width=w, steps=STEPS, guidance=5.0)
        tiled = dict(resident, vae_tiling="on")
        case(f"Wan 1.3B {f}x{h}x{w}", lambda d, dev: wan_pipe(d, dev, args.tiny), "wan", call, shape, device,
             bf16, "float32" if args.tiny else "bfloat16",
             {"weights resident, VAE tiled": tiled, "group offload, VAE tiled": dict(offload, vae_tiling="on")},
             workdir)
    name = f"{NAME}_tiny" if args.tiny else NAME
    data = rio.save_run(args, name, argv, " (--tiny dry run on the CPU)" if args.tiny else "", steps=STEPS,
                        wan_text_encoder_layers=WAN_TE_LAYERS, rows=ROWS)
    text = render(data, name)
    rio.write_text(args.out / f"{name}.md", text)
    print(text)


if __name__ == "__main__":
    main()
