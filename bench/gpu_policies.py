"""Step policies on a full-size denoiser on a lent GPU: what a skipped block saves in wall time, and what the
policy's state costs in accelerator memory. Random weights from vidrt/models/known_configs (Wan 2.1 T2V 1.3B), so the
*decisions* of a gated policy mean nothing here (bench/policies.py measures quality on the trained sample model);
this run fixes each policy's skip pattern by forcing its gate open (threshold = inf), which leaves every cost a
real gate has: the first block, the gate arithmetic, the fp32 histories, the forecast.

    PYTHONUNBUFFERED=1 python bench/gpu_policies.py   # writes bench/results/gpu_policies.json, renders .md
    python bench/gpu_policies.py --tiny               # the same code on a tiny Wan on the CPU (*_tiny.*)
    python bench/gpu_policies.py --report-only        # re-render gpu_policies.md from the JSON (no GPU)

Per run: the denoising loop of WanPipeline (prompt embeddings given, latents out: no text encoder, no VAE),
CFG 5, the same seed. Columns: block evaluations full / method (counted by the policy controller), wall time
full / method (CUDA-synchronised, after one 3-step warm-up run), peak allocated over the loop minus the full run's peak,
and the state the policy holds at the end.
"""
from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
MiB = 2 ** 20
NAME = "gpu_policies"

import results_io as rio  # noqa: E402
from gpu_pipeline import cfg  # noqa: E402


def build(tiny: bool, device, dtype):
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

    wan = "Wan-AI--Wan2.1-T2V-1.3B-Diffusers"
    if tiny:
        tcfg = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
                    text_dim=16, freq_dim=16, ffn_dim=32, num_layers=6, rope_max_seq_len=32)
        scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    else:
        tcfg = cfg(wan, "transformer")
        scheduler = UniPCMultistepScheduler.from_config(cfg(wan, "scheduler", "scheduler_config.json"))
    torch.manual_seed(0)
    with torch.device(device):
        transformer = WanTransformer3DModel.from_config(tcfg)
    transformer = transformer.to(device, dtype).eval()
    transformer.rope.freqs_cos = transformer.rope.freqs_cos.float()
    transformer.rope.freqs_sin = transformer.rope.freqs_sin.float()
    pipe = WanPipeline(tokenizer=None, text_encoder=None, transformer=transformer, vae=None, scheduler=scheduler)
    return pipe, tcfg


def methods():
    import vidrt
    from diffusers.hooks import FirstBlockCacheConfig

    inf = float("inf")
    yield "full", None, None
    yield "TaylorGate, gate forced open (tau=inf, warmup 3, max_skips 6, coast 0)", \
        lambda: vidrt.TaylorGate(threshold=inf, warmup=3, max_skips=6, coast=0.0), None
    yield "TaylorGate, gate forced open, coasting every other step (coast 1)", \
        lambda: vidrt.TaylorGate(threshold=inf, warmup=3, max_skips=6, coast=1.0), None
    yield "StepRehash, drift forced low (threshold=inf, max_reuse 3, warmup 2)", \
        lambda: vidrt.StepRehash(threshold=inf, max_reuse=3, warmup=2), None
    yield "AdaptiveSkip, test forced true (delta=inf, C_max 4)", lambda: vidrt.AdaptiveSkip(delta=inf, max_skips=4), None
    yield "diffusers FirstBlockCache (threshold=inf)", None, lambda: FirstBlockCacheConfig(threshold=inf)


def render(data: dict, name: str = NAME) -> str:
    lines = ["# Step policies on a full-size denoiser (bench/gpu_policies.py)", "",
             rio.provenance("bench/gpu_policies.py", name, data, " --tiny" if name.endswith("_tiny") else ""), ""]
    for run in data["runs"]:
        c = run["settings"]
        lines += [*rio.run_heading(run),
                  f"{c['model']}: {c['frames']}x{c['height']}x{c['width']}"
                  + (f" ({c['tokens']} tokens)" if c.get("tokens") else "")
                  + f", {c['steps']} steps, CFG {c['guidance']:g}, "
                  f"{c['dtype']}, {c['blocks']} blocks. Gates forced open, so the skip pattern is each policy's "
                  "densest (see the docstring); *saved* = block evaluations full / method (a block counts when its "
                  "self-attention runs), *speed* = wall time full / method, *extra* = peak allocated minus the full "
                  "run's peak.", "",
                  "| method | saved | speed | s | extra MiB | state MiB |", "|---|---|---|---|---|---|"]
        for r in run["rows"]:
            if "error" in r:
                lines.append(f"| {r['label']} | error: {r['error']} | | | | |")
            else:
                lines.append(f"| {r['label']} | {r['saved']:.2f}x | {r['speed']:.2f}x | {r['seconds']:.1f} | "
                             f"{r['extra_mib']:.0f} | {r['state_mib']:.0f} |")
        lines.append("")
        lines += rio.notes_block(run.get("notes", []), rio.RUN_NOTES)
    lines += rio.notes_block(data.get("notes", []))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny Wan on the CPU (checks the code path)")
    ap.add_argument("--frames", type=int, default=33)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--steps", type=int, default=50)
    rio.add_run_args(ap, NAME)
    args = ap.parse_args(argv)
    if args.report_only:
        name = f"{NAME}_tiny" if args.tiny else NAME
        rio.write_text(args.out / f"{name}.md", render(rio.read_json(rio.source_json(args, name)), name))
        return 0
    if not args.tiny:
        rio.check_cuda("bench/gpu_policies.py (use --tiny for a CPU run)")

    from vidrt.engine.policies import enable_policy, disable_policy, policy_stats

    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    if args.tiny:
        args.frames, args.height, args.width, args.steps = 9, 32, 32, min(args.steps, 20)
    pipe, tcfg = build(args.tiny, device, dtype)
    den = pipe.transformer
    pipe.set_progress_bar_config(disable=True)
    evaluated = [0]
    for b in den.blocks:      # a block is evaluated when its self-attention runs (same probe as bench/policies.py)
        b.attn1.to_q.register_forward_pre_hook(lambda *_: evaluated.__setitem__(0, evaluated[0] + 1))
    g = torch.Generator("cpu").manual_seed(0)
    emb = torch.randn(1, 512 if not args.tiny else 8, tcfg["text_dim"], generator=g).to(device, dtype)
    neg = torch.randn(emb.shape, generator=g).to(device, dtype)
    n_blocks = len(den.blocks)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def loop(steps=args.steps):
        with torch.no_grad():
            return pipe(prompt_embeds=emb, negative_prompt_embeds=neg, num_frames=args.frames, height=args.height,
                        width=args.width, num_inference_steps=steps, guidance_scale=5.0, output_type="latent",
                        generator=torch.Generator("cpu").manual_seed(1)).frames

    def timed():
        sync()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        evaluated[0] = 0
        t0 = time.perf_counter()
        out = loop()
        sync()
        peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else 0
        return time.perf_counter() - t0, peak, out

    loop(3)                                                 # warm-up: kernels, allocator
    rows, base = [], None
    for label, policy, hook in methods():
        try:
            if policy is not None:
                enable_policy(pipe, policy())
            elif hook is not None:
                den.enable_cache(hook())
            seconds, peak, _ = timed()
            state = 0
            if policy is not None:
                state = int(policy_stats(pipe).get("state_bytes", 0))
                disable_policy(pipe)
            elif hook is not None:
                den.disable_cache()
            if base is None:
                base = (seconds, peak, evaluated[0])
            rows.append(dict(label=label, saved=base[2] / max(1, evaluated[0]), speed=base[0] / seconds, seconds=seconds,
                             extra_mib=(peak - base[1]) / MiB, state_mib=state / MiB))
            print(rows[-1], flush=True)
        except Exception:
            traceback.print_exc()
            rows.append(dict(label=label, error=traceback.format_exc(limit=1).strip().splitlines()[-1]))

    from policies import wan_tokens

    settings = {"model": "a tiny Wan" if args.tiny else "Wan 2.1 T2V 1.3B (random weights)", "frames": args.frames,
                "height": args.height, "width": args.width,
                "tokens": 0 if args.tiny else wan_tokens(pipe, args.frames, args.height, args.width),
                "steps": args.steps, "guidance": 5.0, "dtype": str(dtype).split(".")[-1], "blocks": n_blocks}
    name = f"{NAME}_tiny" if args.tiny else NAME
    data = rio.save_run(args, name, argv, settings=settings, rows=rows)
    text = render(data, name)
    rio.write_text(args.out / f"{name}.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
