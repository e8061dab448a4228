"""Real CUDA peaks of full-size denoisers (random weights: memory needs no training), unsliced vs vidrt's
slicing, in one run, for a lent GPU:

    PYTHONUNBUFFERED=1 python bench/gpu_check.py          # writes $OUT/gpu_check.md (or bench/results/)

Each case builds the real diffusers class from the shipped config.json (vidrt/models/known_configs), runs one
forward on the benchmark shape, and reports peak bytes above what was resident before the call
(parameters + inputs), so the numbers are activations, comparable to the simulator's.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
KNOWN = ROOT / "vidrt" / "models" / "known_configs"
GiB = 2 ** 30
ROWS: list[str] = []


def cfg(model: str, sub: str = "") -> dict:
    path = KNOWN / model / sub / "config.json" if sub else KNOWN / model / "config.json"
    return {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}


def measure(fn) -> tuple[int, float, torch.Tensor]:
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


def compare(name: str, pipe_like, run, baseline_note: str = "") -> None:
    from vidrt.engine.slicing import disable_slicing, enable_slicing

    with torch.no_grad():
        run()  # warm-up (kernels, cuDNN plans)
    peak_u, t_u, out_u = measure(run)
    out_u = out_u.float().cpu()
    enable_slicing(pipe_like)
    with torch.no_grad():
        run()
    peak_s, t_s, out_s = measure(run)
    disable_slicing(pipe_like)
    diff = (out_s.float().cpu() - out_u).abs().max().item()
    scale = out_u.abs().max().item()
    ROWS.append(f"| {name} | {peak_u / GiB:.3f} | {peak_s / GiB:.3f} | {peak_u / max(peak_s, 1):.2f}x | "
                f"{t_u:.2f} | {t_s:.2f} | {t_s / t_u:.2f}x | {diff:.2e} (max |out| {scale:.2f}) | {baseline_note} |")
    print(ROWS[-1], flush=True)


def wan_13b() -> None:
    from diffusers import WanTransformer3DModel

    with torch.device("cuda"):
        model = WanTransformer3DModel.from_config(cfg("Wan-AI--Wan2.1-T2V-1.3B-Diffusers", "transformer"))
    model = model.to(torch.bfloat16).eval()
    g = torch.Generator("cuda").manual_seed(0)
    x = torch.randn(1, 16, 21, 60, 104, device="cuda", dtype=torch.bfloat16, generator=g)
    text = torch.randn(1, 512, 4096, device="cuda", dtype=torch.bfloat16, generator=g)
    t = torch.tensor([500], device="cuda")
    compare("Wan 1.3B transformer, 1 forward, 81x480x832 bf16", model,
            lambda: model(x, t, text, return_dict=False)[0], "simulated 1.50 GiB unsliced")
    # the tracker on CUDA reports the allocator's numbers
    from vidrt.memory.tracker import MemoryTracker

    with MemoryTracker("cuda") as mem, torch.no_grad():
        with mem.stage("denoise", params=[model]):
            model(x, t, text, return_dict=False)
    ROWS.append(f"| tracker on CUDA (Wan 1.3B unsliced) | stage peak {mem.stages[0]['peak_bytes'] / GiB:.3f} GiB, "
                f"activations {mem.stages[0]['activation_bytes'] / GiB:.3f} GiB | | | | | | | |")
    del model, x, text


def animatediff() -> None:
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
    compare("AnimateDiff UNet, 16x512x512 fp16, CFG batch 2", model,
            lambda: model(x, t, encoder_hidden_states=text).sample, "simulated 2.03 GiB unsliced")
    del model


def i2vgen() -> None:
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
    compare("I2VGen-XL UNet, 16x512x512 fp16, CFG batch 2", model,
            lambda: model(x, t, fps=fps, image_latents=img, image_embeddings=emb, encoder_hidden_states=text,
                          return_dict=False)[0])
    del model


def wan_vae() -> None:
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
    ROWS.append(f"| Wan VAE decode 81x480x832 bf16: diffusers `decode` vs vidrt streamed | {peak_d / GiB:.3f} | "
                f"{peak_s / GiB:.3f} | {peak_d / max(peak_s, 1):.2f}x | {t_d:.2f} | {t_s:.2f} | {t_s / t_d:.2f}x | "
                f"{int(n)} frames | simulated 3.95 GiB (diffusers) |")
    print(ROWS[-1], flush=True)


def main() -> None:
    out = Path(os.environ.get("OUT", ROOT / "bench" / "results"))
    out.mkdir(parents=True, exist_ok=True)
    header = [f"# Real CUDA peaks on {torch.cuda.get_device_name()} (torch {torch.__version__})", "",
              "Random weights, one forward per case; peak = max allocated above resident params+inputs.", "",
              "| case | unsliced GiB | sliced GiB | ratio | unsliced s | sliced s | time ratio | max abs diff | note |",
              "|---|---|---|---|---|---|---|---|---|"]
    chosen = set(sys.argv[1:])
    for case in (wan_13b, animatediff, i2vgen, wan_vae):
        if chosen and case.__name__ not in chosen:
            continue
        try:
            case()
        except Exception:
            ROWS.append(f"| {case.__name__} failed: {traceback.format_exc().splitlines()[-1]} | | | | | | | | |")
            traceback.print_exc()
        torch.cuda.empty_cache()
        (out / f"gpu_check{'_' + '_'.join(sorted(chosen)) if chosen else ''}.md").write_text("\n".join(header + ROWS) + "\n")
    print("\n".join(header + ROWS))


if __name__ == "__main__":
    main()
