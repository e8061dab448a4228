"""Whole-pipeline accelerator peaks (weights + activations), diffusers' default call vs `vidrt.render`, for a
lent GPU. Random weights from the shipped configs (vidrt/models/known_configs): memory needs no training.

    PYTHONUNBUFFERED=1 python bench/gpu_pipeline.py          # writes $OUT/gpu_pipeline.md (or bench/results/)
    python bench/gpu_pipeline.py --tiny                      # the same code path on tiny models on the CPU

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
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
KNOWN = ROOT / "vidrt" / "models" / "known_configs"
GiB = 2 ** 30
ROWS: list[str] = []


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
    te_cfg.update(num_layers=1, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
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

    from vidrt.run import render as runner
    from vidrt.config import RenderConfig
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
    ROWS.append(f"| {name} | diffusers `pipe(...)`, all on the GPU | {base / GiB:.3f} | 1.00x | {secs:.1f} | |")
    del frames
    for label, memory in variants.items():
        if memory.get("offload") == "group":
            pipe.to("cpu")  # group offloading streams from host memory
        else:
            pipe.to(device)
        try:
            peak, secs, stages, applied = vidrt_render(pipe, family, shape, memory, device, workdir, dtype_name)
        except Exception as exc:  # one failing variant must not cost the others their (lent, timed) run
            traceback.print_exc()
            ROWS.append(f"| {name} | vidrt, {label} | failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]} "
                        f"| | | |")
            continue
        st = ", ".join(f"{k} {v / GiB:.3f}" for k, v in stages.items())
        print(f"{name}: vidrt {label} {peak / GiB:.3f} GiB ({base / max(peak, 1):.2f}x lower, {secs:.1f} s) "
              f"stages: {st}", flush=True)
        ROWS.append(f"| {name} | vidrt, {label} | {peak / GiB:.3f} | {base / max(peak, 1):.2f}x | {secs:.1f} | {st} |")
    del pipe
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true", help="tiny models, small shapes, CPU (a dry run of this script)")
    ap.add_argument("cases", nargs="*", default=["animatediff", "wan"])
    args = ap.parse_args()
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    if not args.tiny and device.type != "cuda":
        sys.exit("error: no CUDA device (use --tiny for a CPU dry run)")
    half, bf16 = (torch.float32, torch.float32) if args.tiny else (torch.float16, torch.bfloat16)
    workdir = Path(tempfile.mkdtemp(prefix="vidrt-gpu-pipeline-"))
    (workdir / "model_index.json").write_text("{}")
    offload = {"slicing": "auto", "vae_tiling": "auto", "offload": "group"}
    resident = {"slicing": "auto", "vae_tiling": "auto", "offload": "none"}
    if "animatediff" in args.cases:
        size, frames = (32, 4) if args.tiny else (512, 16)
        call = dict(prompt="a red circle moves left", negative_prompt="", num_frames=frames, height=size, width=size,
                    num_inference_steps=2, guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(0))
        shape = dict(frames=frames, height=size, width=size, steps=2, guidance=7.5)
        case(f"AnimateDiff {frames}x{size}x{size}", lambda d, dev: animatediff_pipe(d, dev, args.tiny),
             "animatediff", call, shape, device, half, "float32" if args.tiny else "float16",
             {"weights resident": resident, "group offload": offload}, workdir)
    if "wan" in args.cases:
        (h, w, f) = (32, 32, 5) if args.tiny else (480, 832, 81)
        call = dict(prompt="a red circle moves left", negative_prompt="", num_frames=f, height=h, width=w,
                    num_inference_steps=2, guidance_scale=5.0, generator=torch.Generator("cpu").manual_seed(0))
        shape = dict(frames=f, height=h, width=w, steps=2, guidance=5.0)
        tiled = dict(resident, vae_tiling="on")
        case(f"Wan 1.3B {f}x{h}x{w}", lambda d, dev: wan_pipe(d, dev, args.tiny), "wan", call, shape, device,
             bf16, "float32" if args.tiny else "bfloat16",
             {"weights resident, VAE tiled": tiled, "group offload, VAE tiled": dict(offload, vae_tiling="on")},
             workdir)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (--tiny dry run)"
    text = [f"# Whole-pipeline peaks on {name} (torch {torch.__version__}), bench/gpu_pipeline.py", "",
            "Random weights from vidrt/models/known_configs, 2 steps, CFG on. Peak = max allocated over the whole call "
            "(weights + activations). Wan's text encoder is a 1-layer stand-in at UMT5-XXL width (see the "
            "docstring).", "",
            "| case | run | peak GiB | lower than diffusers | s | vidrt stage peaks (GiB) |",
            "|---|---|---|---|---|---|", *ROWS, ""]
    out = Path(os.environ.get("OUT", ROOT / "bench" / "results")) / ("gpu_pipeline_tiny.md" if args.tiny
                                                                      else "gpu_pipeline.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(text))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
