"""Step policies side by side: full run vs vidrt's policies vs diffusers' own cache hooks, same seeds.

    python bench/policies.py [--steps 50] [--cases 2] [--quick]

Uses the trained sample model samples/tiny-wan when it exists (native frames and size from its vidrt.json);
otherwise a tiny random-init Wan of the same shape - then every number below is from random weights and says
nothing about quality on a real model. For every method and every (prompt, seed) case it records:

* block evaluations: a Wan block counts as evaluated when its self-attention ran (a pre-hook on
  blocks[i].attn1.to_q; the same probe for every method, so diffusers' hooks are counted like ours).
  "saved" = blocks_total / blocks_evaluated (x).
* wall time of the generation (denoise + VAE decode) vs the full run (ratio > 1 = faster).
* PSNR and SSIM of the decoded RGB frames (float, [0,1], no video codec) against the full run.
* extra memory: the largest total size of the tensors the method keeps between steps (policy state /
  diffusers hook state), sampled at every step end.

Writes bench/results/policies.json (with the command, commit, machine and date) and renders policies.md and
the speed/quality plot policies.png from it; `--report-only` re-renders both from the JSON.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import results_io as rio  # noqa: E402

from vidrt.models import get_adapter  # noqa: E402
from vidrt.engine.policies import AdaptiveSkip, StepRehash, TaylorGate, disable_policy, enable_policy, policy_stats  # noqa: E402
from vidrt.core.tensors import tensors_nbytes  # noqa: E402
from vidrt.engine.policies import attached_policies  # noqa: E402

NAME = "policies"
SAMPLE = ROOT / "samples" / "tiny-wan"
PROMPTS = [
    "a red circle moves right on a blue background",
    "a yellow square moves up on a green background",
    "a blue triangle moves left on a red background",
    "a green circle moves down on a yellow background",
]


# ------------------------------------------------------------------------------------------------
# metrics
# ------------------------------------------------------------------------------------------------
def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def _psnr_of_mse(mse: float) -> float:
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def _gauss(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM (Wang et al. 2004; Gaussian 11x11, sigma 1.5, data range 1) over frames and channels."""
    x = torch.from_numpy(a.astype(np.float64)).reshape(-1, *a.shape[-3:]).permute(0, 3, 1, 2)
    y = torch.from_numpy(b.astype(np.float64)).reshape(-1, *b.shape[-3:]).permute(0, 3, 1, 2)
    n, c, h, w = x.shape
    size = min(11, h, w)
    win = _gauss(size).to(x)
    x, y = x.reshape(n * c, 1, h, w), y.reshape(n * c, 1, h, w)
    mu_x, mu_y = F.conv2d(x, win), F.conv2d(y, win)
    sxx = F.conv2d(x * x, win) - mu_x ** 2
    syy = F.conv2d(y * y, win) - mu_y ** 2
    sxy = F.conv2d(x * y, win) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))
    return float(s.mean())


def hook_state_bytes(den) -> int:
    """Bytes of tensors held in diffusers hook states (StateManager caches) under `den`."""
    from diffusers.hooks.hooks import StateManager

    total = 0
    seen: set[int] = set()
    for m in den.modules():
        reg = getattr(m, "_diffusers_hook", None)
        if reg is None:
            continue
        for hook in reg.hooks.values():
            for attr in vars(hook).values():
                if isinstance(attr, StateManager):
                    for state in attr._state_cache.values():
                        for v in vars(state).values():
                            if isinstance(v, torch.Tensor):
                                if id(v) not in seen:
                                    seen.add(id(v))
                                    total += tensors_nbytes(v)
                            else:
                                total += tensors_nbytes(v)
    return total


# ------------------------------------------------------------------------------------------------
# model
# ------------------------------------------------------------------------------------------------
def load_pipe(folder: Path = SAMPLE):
    if (folder / "model_index.json").is_file():
        from diffusers import WanPipeline

        pipe = WanPipeline.from_pretrained(str(folder), torch_dtype=torch.float32)
        meta = json.loads((folder / "vidrt.json").read_text()) if (folder / "vidrt.json").is_file() else {}
        frames = int(meta.get("native_frames", 9))
        height, width = int(meta.get("height", 32)), int(meta.get("width", 32))
        trained = True
        size_meta = {k: meta.get(k) for k in ("train_steps", "final_loss", "vae_recon_mse", "quick")}
    else:
        pipe = get_adapter("wan").tiny(0, num_layers=6)
        frames, height, width = 9, 32, 32
        trained = False
        size_meta = {}
    for m in (pipe.transformer, pipe.text_encoder, pipe.vae):
        m.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe, dict(frames=frames, height=height, width=width, sample=size_meta), trained


class Probe:
    """Counts Wan block evaluations (attn1.to_q calls) and samples held state at every step end."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.den = pipe.transformer
        self.count = 0
        self.handles = [b.attn1.to_q.register_forward_pre_hook(self._hit) for b in self.den.blocks]
        # full calls (every block ran): a depth-independent count, unlike block evaluations
        self.handles += [self.den.register_forward_pre_hook(self._call_start),
                         self.den.register_forward_hook(self._call_end)]
        self.max_state = 0
        self.full_calls = 0
        self._at = 0

    def _hit(self, *_):
        self.count += 1

    def _call_start(self, *_):
        self._at = self.count

    def _call_end(self, *_):
        self.full_calls += int(self.count - self._at == len(self.den.blocks))

    def callback(self, pipe, i, t, kwargs):
        held = hook_state_bytes(self.den)
        if attached_policies(pipe):          # (policy_stats alone would also report a detached policy's last run)
            held += int(policy_stats(pipe).get("state_bytes", 0))
        self.max_state = max(self.max_state, held)
        return {}

    def close(self):
        for h in self.handles:
            h.remove()


def wan_tokens(pipe, frames: int, height: int, width: int) -> int:
    """Sequence length of a Wan pipeline's transformer for a video of this size."""
    pt, ph, pw = pipe.transformer.config.patch_size
    latent_frames = get_adapter("wan").latent_frames(frames)
    ratio = pipe.vae_scale_factor_spatial
    return (latent_frames // pt) * (height // ratio // ph) * (width // ratio // pw)


def hidden_state_bytes(pipe, size: dict) -> int:
    """Bytes of one fp32 hidden state (tokens x inner dim) of the transformer at this size."""
    cfg = pipe.transformer.config
    return wan_tokens(pipe, size["frames"], size["height"], size["width"]) * cfg.num_attention_heads * \
        cfg.attention_head_dim * 4


def generate(pipe, probe: Probe, prompt: str, seed: int, steps: int, size: dict, guidance: float):
    probe.count = 0
    probe.max_state = 0
    probe.full_calls = 0
    t0 = time.perf_counter()
    out = pipe(prompt=prompt, negative_prompt="", num_frames=size["frames"], height=size["height"],
               width=size["width"], num_inference_steps=steps, guidance_scale=guidance, output_type="np",
               generator=torch.Generator().manual_seed(seed), callback_on_step_end=probe.callback,
               max_sequence_length=get_adapter("wan").max_sequence_length(pipe)).frames
    wall = time.perf_counter() - t0
    return np.asarray(out[0], dtype=np.float32), wall, probe.count, probe.max_state


# ------------------------------------------------------------------------------------------------
# methods
# ------------------------------------------------------------------------------------------------
def mag_ratios(pipe, probe, case, steps, size, guidance) -> list[float]:
    """MagCache calibration done here (same formula as diffusers' calibrate mode, cond stream)."""
    den = pipe.transformer
    res: list[torch.Tensor] = []
    first_in: list[torch.Tensor] = []
    h1 = den.blocks[0].register_forward_pre_hook(lambda m, a: first_in.append(a[0].detach().float().clone()))
    h2 = den.blocks[-1].register_forward_hook(lambda m, a, o: res.append(o.detach().float() - first_in[-1]))
    try:
        generate(pipe, probe, case[0], case[1], steps, size, guidance)
    finally:
        h1.remove()
        h2.remove()
    cond = res[0::2] if guidance > 1 else res
    ratios = [1.0]
    for prev, cur in zip(cond[:-1], cond[1:]):
        ratios.append(float((torch.linalg.norm(cur, dim=-1) / (torch.linalg.norm(prev, dim=-1) + 1e-8)).mean()))
    return ratios


def diffusers_method(config_factory):
    def setup(pipe):
        pipe.transformer.enable_cache(config_factory())

    def teardown(pipe):
        pipe.transformer.disable_cache()

    return setup, teardown


def vidrt_method(factory):
    def setup(pipe):
        enable_policy(pipe, factory())

    def teardown(pipe):
        disable_policy(pipe)

    return setup, teardown


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--cases", type=int, default=8, help="(prompt, seed) cases, the same for every method")
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--quick", action="store_true", help="fewer sweep points (smoke run)")
    ap.add_argument("--model", type=Path, default=SAMPLE, help="a Wan pipeline folder (default samples/tiny-wan)")
    rio.add_output_args(ap, NAME)
    args = ap.parse_args(argv)
    if args.report_only:
        data = rio.read_json(rio.source_json(args, NAME))
        write_md(data, args.out / "policies.md")
        plot(data["main"] + data["sweep"], args.out / "policies.png", data["meta"])
        return 0
    torch.set_num_threads(1)  # a tiny model on a shared CPU: more threads only add contention

    from diffusers.hooks import FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig

    pipe, size, trained = load_pipe(args.model)
    n_blocks = len(pipe.transformer.blocks)
    steps, guidance = args.steps, args.guidance
    streams = 2 if guidance > 1 else 1
    cases = [(PROMPTS[i % len(PROMPTS)], i) for i in range(args.cases)]
    probe = Probe(pipe)
    blocks_total = steps * streams * n_blocks

    print(f"model: {str(args.model) + ' (trained)' if trained else 'tiny random-init Wan (random weights!)'}; "
          f"{n_blocks} blocks, {size['frames']}x{size['height']}x{size['width']}, {steps} steps, "
          f"guidance {guidance}, {len(cases)} cases", flush=True)

    # full reference (one warm-up generation first so timings are comparable)
    generate(pipe, probe, cases[0][0], cases[0][1], steps, size, guidance)
    full = []
    for prompt, seed in cases:
        frames, wall, count, _ = generate(pipe, probe, prompt, seed, steps, size, guidance)
        assert count == blocks_total, (count, blocks_total)
        assert probe.full_calls == steps * streams, (probe.full_calls, steps * streams)
        full.append((frames, wall))
    ratios = mag_ratios(pipe, probe, cases[0], steps, size, guidance)

    def measure(label: str, family: str, param, setup, teardown) -> dict:
        rows = []
        for (prompt, seed), (ref, ref_wall) in zip(cases, full):
            setup(pipe)
            try:
                frames, wall, count, state = generate(pipe, probe, prompt, seed, steps, size, guidance)
                stats = policy_stats(pipe) if family.startswith("vidrt") else None
            finally:
                teardown(pipe)
            if stats is not None and stats["blocks_evaluated"] != count:
                raise RuntimeError(f"{label}: stats say {stats['blocks_evaluated']} block evaluations, probe {count}")
            mse = float(np.mean((frames.astype(np.float64) - ref.astype(np.float64)) ** 2))
            rows.append(dict(count=count, full_calls=probe.full_calls, wall=wall, ref_wall=ref_wall, mse=mse,
                             psnr=psnr(frames, ref),
                             ssim=ssim(frames, ref),
                             state=state, stats=stats))
        r = dict(label=label, family=family, param=param,
                 saved=blocks_total * len(rows) / max(1, sum(x["count"] for x in rows)),
                 full_ratio=steps * streams * len(rows) / max(1, sum(x["full_calls"] for x in rows)),
                 speed=sum(x["ref_wall"] for x in rows) / sum(x["wall"] for x in rows),
                 psnr=min(99.0, _psnr_of_mse(float(np.mean([x["mse"] for x in rows])))),
                 psnr_min=float(min(min(x["psnr"], 99.0) for x in rows)),
                 ssim=float(np.mean([x["ssim"] for x in rows])),
                 state_bytes=int(max(x["state"] for x in rows)),
                 steps_full=(rows[0]["stats"] or {}).get("steps_full"),
                 key_steps=(rows[0]["stats"] or {}).get("key_steps"),
                 skipped_steps=(rows[0]["stats"] or {}).get("skipped_steps"))
        print(f"  {label:<42} saved {r['saved']:5.2f}x  speed {r['speed']:5.2f}x  PSNR {r['psnr']:6.2f} dB  "
              f"SSIM {r['ssim']:.4f}  state {r['state_bytes'] / 1024:8.1f} KiB", flush=True)
        return r

    plain = dict(coast=0.0, step_size_power=0.0)      # the published CG-Taylor gate, without vidrt's refinements
    main_methods = [
        ("vidrt TaylorGate (defaults: tau=0.2, warmup=3, max_skips=6, coast=0.75, step_size_power=0.5)",
         "vidrt-taylor-default", 0.2, *vidrt_method(lambda: TaylorGate())),
        ("vidrt TaylorGate, defaults without coasting (coast=0)", "vidrt-taylor-nocoast", 0.2,
         *vidrt_method(lambda: TaylorGate(coast=0.0))),
        ("vidrt TaylorGate, defaults without step-size weighting (step_size_power=0)", "vidrt-taylor-nosize", 0.2,
         *vidrt_method(lambda: TaylorGate(step_size_power=0.0))),
        ("vidrt TaylorGate, plain gate (tau=0.2, warmup=3, max_skips=6; no coast, no step-size weighting)",
         "vidrt-taylor-plain", 0.2, *vidrt_method(lambda: TaylorGate(**plain))),
        ("vidrt TaylorGate (paper's Wan setting: plain gate, tau=0.2, warmup=6, no cap)", "vidrt-taylor-w6", 0.2,
         *vidrt_method(lambda: TaylorGate(threshold=0.2, warmup=6, max_skips=None, **plain))),
        ("vidrt StepRehash (defaults)", "vidrt-rehash", 0.15, *vidrt_method(lambda: StepRehash())),
        ("vidrt AdaptiveSkip (defaults: delta=0.01, C_max=4)", "vidrt-adaptive", 0.01, *vidrt_method(lambda: AdaptiveSkip())),
        ("vidrt AdaptiveSkip + TaylorGate (defaults)", "vidrt-compose", None,
         *vidrt_method(lambda: [AdaptiveSkip(), TaylorGate()])),
        ("vidrt AdaptiveSkip(delta=0.1) + TaylorGate (defaults)", "vidrt-compose", "0.1/0.2",
         *vidrt_method(lambda: [AdaptiveSkip(delta=0.1), TaylorGate()])),
        ("diffusers FirstBlockCache (threshold=0.05)", "diffusers-fbc", 0.05,
         *diffusers_method(lambda: FirstBlockCacheConfig(threshold=0.05))),
        ("diffusers TaylorSeer lite (interval 5, order 1)", "diffusers-taylorseer", 5,
         *diffusers_method(lambda: TaylorSeerCacheConfig(cache_interval=5, disable_cache_before_step=3, max_order=1,
                                                         taylor_factors_dtype=torch.float32, use_lite_mode=True))),
        ("diffusers MagCache (threshold=0.06, calibrated)", "diffusers-magcache", 0.06,
         *diffusers_method(lambda: MagCacheConfig(threshold=0.06, max_skip_steps=3, num_inference_steps=steps,
                                                  mag_ratios=ratios))),
    ]
    print("main comparison:")
    results = [measure(*m) for m in main_methods]

    q = args.quick
    taus = [0.05, 0.1, 0.15, 0.3, 0.5, math.inf] if not q else [0.1, 0.5]
    paper_taus = [0.05, 0.1, 0.3, 0.5] if not q else [0.5]
    plain_taus = [0.1, 0.3, 0.5] if not q else [0.3]
    max_skips = [4, 8, None] if not q else [4]
    coasts = [0.5, 1.0] if not q else [1.0]
    # the high-quality end: denser refresh needs shorter secants (min_gap) and a shorter horizon (max_skips)
    quality_end = ([(0.03, 3, 4), (0.05, 3, 4), (0.07, 3, 4), (0.02, 2, 2), (0.01, 3, 2)] if not q
                   else [(0.05, 3, 4)])
    deltas = [0.005, 0.02, 0.05, 0.1] if not q else [0.05]
    rehash = [0.05, 0.1, 0.3] if not q else [0.3]
    composed = [0.05, 0.2] if not q else [0.2]
    fbc = [0.1, 0.2, 0.4] if not q else [0.2]
    mag = [0.03, 0.12, 0.25] if not q else [0.12]
    ts_int = [2, 3, 8] if not q else [3]
    print("sweeps:")
    sweep = []
    for tau in taus:             # the default TaylorGate's curve
        sweep.append(measure(f"TaylorGate defaults, tau={tau}", "vidrt-taylor-default", tau,
                             *vidrt_method(lambda tau=tau: TaylorGate(threshold=tau))))
    for ms in max_skips:
        sweep.append(measure(f"TaylorGate defaults, max_skips={ms}", "vidrt-taylor-cap", ms,
                             *vidrt_method(lambda ms=ms: TaylorGate(max_skips=ms))))
    for c in coasts:
        sweep.append(measure(f"TaylorGate defaults, coast={c}", "vidrt-taylor-coast", c,
                             *vidrt_method(lambda c=c: TaylorGate(coast=c))))
    for tau, gap, ms in quality_end:
        sweep.append(measure(f"TaylorGate defaults, tau={tau} min_gap={gap} max_skips={ms}", "vidrt-taylor-quality",
                             tau, *vidrt_method(lambda tau=tau, gap=gap, ms=ms: TaylorGate(
                                 threshold=tau, min_gap=gap, max_skips=ms))))
    for tau in plain_taus:
        sweep.append(measure(f"TaylorGate plain gate, tau={tau} warmup=3 max_skips=6", "vidrt-taylor-plain", tau,
                             *vidrt_method(lambda tau=tau: TaylorGate(threshold=tau, **plain))))
    for tau in paper_taus:
        sweep.append(measure(f"TaylorGate plain gate, tau={tau} warmup=6 no cap", "vidrt-taylor-w6", tau,
                             *vidrt_method(lambda tau=tau: TaylorGate(threshold=tau, warmup=6, max_skips=None,
                                                                      **plain))))
    for d in deltas:
        sweep.append(measure(f"AdaptiveSkip delta={d}", "vidrt-adaptive", d,
                             *vidrt_method(lambda d=d: AdaptiveSkip(delta=d))))
    for th in rehash:
        sweep.append(measure(f"StepRehash threshold={th}", "vidrt-rehash", th,
                             *vidrt_method(lambda th=th: StepRehash(threshold=th))))
    for d in composed:
        sweep.append(measure(f"AdaptiveSkip delta={d} + TaylorGate (defaults)", "vidrt-compose", d,
                             *vidrt_method(lambda d=d: [AdaptiveSkip(delta=d), TaylorGate()])))
    for th in fbc:
        sweep.append(measure(f"FirstBlockCache threshold={th}", "diffusers-fbc", th,
                             *diffusers_method(lambda th=th: FirstBlockCacheConfig(threshold=th))))
    for th in mag:
        sweep.append(measure(f"MagCache threshold={th}", "diffusers-magcache", th,
                             *diffusers_method(lambda th=th: MagCacheConfig(threshold=th, max_skip_steps=4,
                                                                            num_inference_steps=steps,
                                                                            mag_ratios=ratios))))
    for iv in ts_int:
        sweep.append(measure(f"TaylorSeer lite interval={iv}", "diffusers-taylorseer", iv,
                             *diffusers_method(lambda iv=iv: TaylorSeerCacheConfig(
                                 cache_interval=iv, disable_cache_before_step=3, max_order=1,
                                 taylor_factors_dtype=torch.float32, use_lite_mode=True))))
    probe.close()

    args.out.mkdir(parents=True, exist_ok=True)
    model_name = (str(args.model.relative_to(ROOT)) if args.model.is_relative_to(ROOT) else str(args.model))
    meta = dict(trained=trained, model=model_name if trained else "tiny random Wan", blocks=n_blocks,
                steps=steps, guidance=guidance, cases=[list(c) for c in cases], size=size,
                full_wall_s=[w for _, w in full], torch=torch.__version__, threads=torch.get_num_threads(),
                hidden_state_bytes=hidden_state_bytes(pipe, size))
    data = dict(rio.metadata(argv), meta=meta, main=results, sweep=sweep)
    (args.out / "policies.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    data = rio.read_json(args.out / "policies.json")      # render what was stored
    plot(data["main"] + data["sweep"], args.out / "policies.png", data["meta"])
    write_md(data, args.out / "policies.md")
    return 0


def plot(rows, path: Path, meta) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    fams: dict[str, list] = {}
    for r in rows:
        fams.setdefault(r["family"], []).append(r)
    colours = plt.get_cmap("tab20").colors
    for k, (fam, rs) in enumerate(sorted(fams.items())):
        rs = sorted(rs, key=lambda r: r["saved"])
        ours = fam.startswith("vidrt")
        ax.plot([r["saved"] for r in rs], [r["psnr"] for r in rs], "-" if ours else "--", marker="o" if ours else "s",
                color=colours[k % len(colours)], label=fam, alpha=0.85)
    ax.axhline(30, color="grey", lw=0.6, ls=":")
    ax.axhline(25, color="grey", lw=0.6, ls=":")
    ax.axvline(3, color="grey", lw=0.6, ls=":")
    ax.axvline(4.5, color="grey", lw=0.6, ls=":")
    ax.set_xlabel("block evaluations saved (x)")
    ax.set_ylabel("PSNR vs full run (dB, pooled over cases; 99 = identical)")
    src = f"trained {meta['model']}" if meta["trained"] else "RANDOM-WEIGHT tiny Wan"
    ax.set_title(f"Step policies, {src}, {meta['steps']} steps, {meta['blocks']} blocks")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120, metadata={"Software": None})
    plt.close(fig)
    print(f"wrote {path}")


def _fmt(r) -> str:
    p = "identical" if r["psnr"] >= 99 else f"{r['psnr']:.2f}"
    return (f"| {r['label']} | {r['saved']:.2f}x | {r['full_ratio']:.2f}x | {r['speed']:.2f}x | {p} | "
            f"{r['psnr_min']:.2f} | {r['ssim']:.4f} | {r['state_bytes'] / 1024:.1f} |")


def write_md(data: dict, path: Path) -> None:
    meta, results, sweep = data["meta"], data["main"], data["sweep"]
    lines = ["# Step policies: block evaluations saved vs quality", "", rio.provenance("bench/policies.py", NAME, data),
             ""]
    if meta["trained"]:
        lines.append(f"Model: the trained sample model `{meta['model']}` ({meta['blocks']} blocks; its vidrt.json: "
                     f"{meta['size'].get('sample')}).")
    else:
        lines.append("**Model: a tiny RANDOM-INIT Wan (samples/tiny-wan did not exist when this ran). Every quality "
                     "number here is from random weights and says nothing about a trained model.**")
    s = meta["size"]
    lines += [
        f"{s['frames']} frames {s['height']}x{s['width']}, {meta['steps']} steps, guidance {meta['guidance']} "
        f"(2 CFG calls per step), cases (prompt, seed): {meta['cases']}; torch {meta['torch']}, CPU, "
        f"{meta['threads']} threads.",
        "",
        "Columns: *saved* = block evaluations of the full run / of the method (a block is evaluated when its "
        "self-attention runs; same probe for every method). *calls/full* = denoiser calls / calls in which every "
        "block ran (the same ratio on a model of any depth; *saved* approaches it as the depth grows, since a "
        "gated step costs 1 block of N). *speed* = wall time full / method (denoise + decode; "
        "on this tiny model on a shared 2-core CPU, Python overhead and noise dominate: read it as a sanity check, "
        "not a measurement). *PSNR/SSIM* = decoded RGB frames vs the full run with the same seed (PSNR of the "
        "MSE pooled over cases, SSIM mean; PSNR min = worst case). *state* = largest size of tensors the method keeps between steps.",
        "", "## Main comparison (defaults)", "",
        "| method | saved | calls/full | speed | PSNR dB | PSNR min | SSIM | state KiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [_fmt(r) for r in results]
    lines += ["", "## Sweeps (speed/quality curve: policies.png)", "",
              "| method | saved | calls/full | speed | PSNR dB | PSNR min | SSIM | state KiB |",
        "|---|---|---|---|---|---|---|---|"]
    lines += [_fmt(r) for r in sweep]
    allr = results + sweep

    def best(fams, min_psnr, key="psnr", rows=allr):
        ok = [r for r in rows if any(r["family"].startswith(f) for f in fams) and r[key] >= min_psnr]
        return max(ok, key=lambda r: r["saved"]) if ok else None

    def verdict(r, bar_x, bar_db, key="psnr"):
        if r is None:
            return f"none reaches {bar_db:g} dB -> NOT met"
        return (f"{r['saved']:.2f}x ({r['label']}, PSNR {r['psnr']:.1f}, worst case {r['psnr_min']:.1f}) -> "
                + ("met" if r["saved"] >= bar_x else "NOT met"))

    default_tg = results[0]
    lines += ["", "## Targets", "",
              f"- TaylorGate with the default settings >= 3x at PSNR >= 30 dB (pooled): {default_tg['saved']:.2f}x at "
              f"{default_tg['psnr']:.1f} dB (worst case {default_tg['psnr_min']:.1f}) -> "
              + ("met" if default_tg["saved"] >= 3 and default_tg["psnr"] >= 30 else "NOT met"),
              "- best TaylorGate setting >= 3x at >= 30 dB pooled: " + verdict(best(["vidrt-taylor"], 30.0), 3, 30),
              "  - the same, every case >= 30 dB: " + verdict(best(["vidrt-taylor"], 30.0, "psnr_min"), 3, 30),
              "- best vidrt policy/composition >= 4.5x at PSNR >= 25 dB pooled: "
              + verdict(best(["vidrt"], 25.0), 4.5, 25),
              "  - the same, every case >= 25 dB: " + verdict(best(["vidrt"], 25.0, "psnr_min"), 4.5, 25)]
    hid = meta.get("hidden_state_bytes")
    if hid:
        n = default_tg["state_bytes"] / hid / 2
        lines.append(f"- TaylorGate state <= one hidden-state tensor per stream per order: {default_tg['state_bytes'] / 1024:.0f} "
                     f"KiB = {n:g} fp32 hidden states ({hid / 1024:.0f} KiB each) per CFG stream at the peak: the Taylor "
                     "terms of order 0..1 (last block) and 0..3 (first block) are 6, plus one base value per history "
                     "that min_gap's wider secant needs (8 with the defaults; 6 with min_gap=1) -> "
                     + ("met" if n <= 6 else "met for the Taylor terms; the 2 base values are above it"))
    d25, d30 = best(["diffusers"], 25.0), best(["diffusers"], 30.0)
    lines.append("- diffusers hooks for reference: best at >= 30 dB "
                 + (f"{d30['saved']:.2f}x ({d30['label']})" if d30 else "none")
                 + "; best at >= 25 dB " + (f"{d25['saved']:.2f}x ({d25['label']})" if d25 else "none"))
    # speed/quality curve: is each diffusers point matched or beaten on both axes by some vidrt point?
    ours = [r for r in allr if r["family"].startswith("vidrt")]
    for axis, what in (("saved", "block evaluations saved"), ("full_ratio", "calls/full (depth-independent)")):
        lines.append(f"- speed/quality curve on {what} vs PSNR:")
        for fam in ("diffusers-fbc", "diffusers-taylorseer", "diffusers-magcache"):
            pts = [r for r in allr if r["family"] == fam]
            beaten = [r for r in pts if any(o[axis] >= r[axis] and o["psnr"] >= r["psnr"] for o in ours)]
            lines.append(f"  - {fam}: {len(beaten)} of {len(pts)} points matched or beaten on both axes by a vidrt "
                         "point" + ("" if len(beaten) == len(pts) else "; not: " + ", ".join(
                             f"{r['label']} ({r[axis]:.2f}x, {r['psnr']:.1f} dB)" for r in pts if r not in beaten)))
    if not meta["trained"]:
        lines = [ln.replace("-> met", "-> met on random weights only (not evidence)") for ln in lines]
        lines.append("- (random weights: the targets are defined for the trained model; rerun "
                     "`python bench/policies.py` once samples/tiny-wan exists)")
    lines += ["", "Notes:",
              "- A skipped step still runs the first block (TaylorGate gate, StepRehash drift check) and the "
              "patch embedding / output head, so on a model with N blocks TaylorGate saves at most N x on a "
              "skipped step; AdaptiveSkip saves whole calls.",
              "- diffusers' TaylorSeer default patterns (`^blocks.*attn`) match no module name of "
              "WanTransformer3DModel (fullmatch on `blocks.0.attn1`), so only its lite mode (skip whole blocks, "
              "forecast proj_out) does anything on Wan; that is what is measured.",
              "- MagCache needs per-model magnitude ratios: calibrated here on the first case with diffusers' "
              "formula (mean norm ratio of the residual of the block stack, cond stream).",
              "- The policy state column for vidrt is the fp32 history: TaylorGate keeps first-block (order 3) "
              "and last-block (order 1) differences per CFG stream.",
              "- TaylorGate's refinements over the published gate (docs/POLICIES.md): *coast* - after a gate error "
              "below coast x tau the stream's next step is forecast without running the first block (never two in a "
              "row; DiT only); *step_size_power* - the gate error is scaled by (step size / mean step size)^power, so "
              "the long late steps of a shifted flow-matching schedule are gated harder than the short early ones. "
              "A coasted step costs no block at all, which matters most on a shallow model: here a gated step costs "
              "1 of " + str(meta["blocks"]) + " blocks, on Wan 1.3B 1 of 30."]
    rio.write_text(path, "\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
