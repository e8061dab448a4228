"""Sample-model quality: the shipped tiny Wan model vs the same pipeline with random weights.

Renders N grammar prompts with `WanPipeline.from_pretrained("samples/tiny-wan")` (output_type="np") and with the
same component configs re-initialised randomly, and reports per pipeline:

- colour agreement: dominant colour of the moving blob (pixels that differ from the border/background colour)
  equals the prompt's object colour;
- background agreement: border colour equals the prompt's background colour;
- direction agreement: the blob's centroid track (least-squares velocity) points to the prompt's direction
  (nearest of the 8 grammar directions), plus the mean cosine with the prompted direction;
- temporal consistency: mean |frame_t+1 - frame_t| (lower is steadier; the procedural data is a reference);
- sharpness: variance of the Laplacian (the procedural data is a reference).

Writes bench/results/sample_quality.json (the numbers, and the three clips of the frame strip as uint8) and
renders sample_quality.md and the frame strip sample_strip.png from it.

    python bench/sample_quality.py [--model samples/tiny-wan] [--n 16] [--steps 25] [--guidance 5]
    python bench/sample_quality.py --report-only     # re-render the .md and the strip from the JSON
"""
from __future__ import annotations

import argparse
import base64
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import results_io as rio  # noqa: E402
import vidrt_dev.quality as q  # noqa: E402
from vidrt_dev.sample_data import COLOURS, DIRECTIONS, PALETTE, SHAPES, caption, make_clip, parse_caption  # noqa: E402

NAME = "sample_quality"
STRIP = "sample_strip.png"


def bench_prompts(n: int, seed: int = 1234) -> list[str]:
    """n grammar prompts cycling through every object colour and direction (deterministic)."""
    rng = np.random.default_rng(seed)
    dirs = list(DIRECTIONS)
    out = []
    for i in range(n):
        colour = COLOURS[i % len(COLOURS)]
        direction = dirs[(i * 3) % len(dirs)]
        shape = SHAPES[i % len(SHAPES)]
        bgs = [c for c in COLOURS if c != colour]
        out.append(caption(colour, shape, direction, bgs[rng.integers(len(bgs))]))
    return out


def load_pipeline(path: str):
    import torch
    from diffusers import WanPipeline

    return WanPipeline.from_pretrained(path, torch_dtype=torch.float32)


def random_pipeline(path: str, seed: int = 0):
    """The shipped pipeline's configs with freshly initialised (untrained) weights."""
    import torch
    from diffusers import AutoencoderKLWan, WanPipeline, WanTransformer3DModel
    from transformers import UMT5EncoderModel

    pipe = load_pipeline(path)
    torch.manual_seed(seed)
    vae = AutoencoderKLWan.from_config(pipe.vae.config)
    transformer = WanTransformer3DModel.from_config(pipe.transformer.config)
    text_encoder = UMT5EncoderModel(pipe.text_encoder.config)
    return WanPipeline(vae=vae, transformer=transformer, text_encoder=text_encoder, tokenizer=pipe.tokenizer,
                       scheduler=pipe.scheduler)


def render(pipe, prompt: str, *, frames: int, height: int, width: int, steps: int, guidance: float,
           seed: int, negative_prompt: str = "") -> np.ndarray:
    import torch

    from vidrt.models import get_adapter

    g = torch.Generator("cpu").manual_seed(seed)
    # the text length the model was trained with (its tokenizer's model_max_length), as vidrt passes it
    out = pipe(prompt=prompt, negative_prompt=negative_prompt, num_frames=frames, height=height, width=width,
               num_inference_steps=steps, guidance_scale=guidance, generator=g, output_type="np",
               max_sequence_length=get_adapter("wan").max_sequence_length(pipe))
    return np.asarray(out.frames[0], np.float32)


def measure(video: np.ndarray, prompt: str) -> dict:
    """The clip's attributes against its prompt: colour (median of the blob), background, shape (the most
    frequent per-frame shape), direction; and frame by frame (`frame_attributes`), the share of frames whose
    object colour, background and shape are right and the worst frame's colour error."""
    p = parse_caption(prompt)
    colour = q.blob_colour(video)
    direction = q.motion_direction(video)
    frames = frame_attributes(video, prompt)
    shapes = [f["shape"] for f in frames if f["shape"] is not None]
    shape = max(set(shapes), key=shapes.count) if shapes else None
    errors = [f["colour_error"] if f["present"] else math.inf for f in frames]
    return {
        "colour_ok": colour == p["colour"],
        "background_ok": q.nearest_colour(q.background_colour(video)) == p["background"],
        "shape_ok": shape == p["shape"],
        "direction_ok": direction == p["direction"],
        "direction_cos": q.direction_cosine(video, p["direction"]),
        "colour_frames": float(np.mean([f["present"] and f["colour"] == p["colour"] for f in frames])),
        "background_frames": float(np.mean([f["background"] == p["background"] for f in frames])),
        "shape_frames": float(np.mean([f["shape"] == p["shape"] for f in frames])),
        "worst_colour_error": float(min(max(errors), 999.0)),
        "temporal": q.temporal_consistency(video),
        "sharpness": q.sharpness(video),
        "colour": colour,
        "shape": shape,
        "direction": direction,
    }


def core_pixels(mask: np.ndarray) -> np.ndarray:
    """The blob pixels whose four neighbours are blob pixels too: a rendered object's edge blends with the
    background, so its colour is judged on the core."""
    core = np.zeros_like(mask)
    core[1:-1, 1:-1] = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    return core


def palette_distance(rgb, name: str) -> float:
    """Euclidean RGB distance from a palette colour, in 0-255 units."""
    return float(255 * np.linalg.norm(np.asarray(rgb, np.float32) - np.asarray(PALETTE[name], np.float32)))


def frame_attributes(video: np.ndarray, prompt: str, threshold: float = 0.25) -> list[dict]:
    """The attributes above, frame by frame, each frame against its own border colour: a long video's
    background can drift, and one background for the whole clip would then misplace the object in the frames
    where it did. Per frame: the background's palette name and distance from the prompted one; whether an
    object is there (>= 3 blob pixels, as `blob_colour`); its core colour (median of `core_pixels`, all blob
    pixels where the core is empty) and distance from the prompted colour; its centroid (NaN when absent)."""
    p = parse_caption(prompt)
    out = []
    for frame in np.asarray(video, np.float32):
        clip = frame[None]
        bg = q.background_colour(clip)
        mask = q.blob_masks(clip, threshold)[0]
        present = int(mask.sum()) >= 3
        core = core_pixels(mask)
        rgb = np.median(frame[core if core.any() else mask], axis=0) if present else None
        out.append({
            "background": q.nearest_colour(bg),
            "background_error": palette_distance(bg, p["background"]),
            "present": present,
            "colour": q.nearest_colour(rgb) if present else None,
            "colour_error": palette_distance(rgb, p["colour"]) if present else None,
            "shape": q.shape_of(mask) if present else None,
            "centroid": q.centroid_track(clip, threshold)[0],
        })
    return out


def summarise(rows: list[dict]) -> dict:
    out = {
        "colour agreement": np.mean([r["colour_ok"] for r in rows]),
        "background agreement": np.mean([r["background_ok"] for r in rows]),
        "direction agreement": np.mean([r["direction_ok"] for r in rows]),
        "direction cosine (mean)": np.mean([r["direction_cos"] for r in rows]),
        "temporal: mean abs frame diff": np.mean([r["temporal"] for r in rows]),
        "sharpness (Laplacian var)": np.mean([r["sharpness"] for r in rows]),
    }
    if "shape_ok" in rows[0]:       # (results recorded before shape and per-frame figures have none)
        out.update({
            "shape agreement": np.mean([r["shape_ok"] for r in rows]),
            "frames with the right colour (share)": np.mean([r["colour_frames"] for r in rows]),
            "frames with the right colour (worst case)": min(r["colour_frames"] for r in rows),
            "frames with the right background (share)": np.mean([r["background_frames"] for r in rows]),
            "frames with the right background (worst case)": min(r["background_frames"] for r in rows),
            "frames with the right shape (share)": np.mean([r["shape_frames"] for r in rows]),
            "cases right in colour, shape and direction": np.mean(
                [r["colour_ok"] and r["shape_ok"] and r["direction_ok"] for r in rows]),
        })
    return out


def frame_strip(rows: list[tuple[str, np.ndarray]], path: Path, scale: int = 4) -> None:
    from PIL import Image, ImageDraw

    T, H, W, _ = rows[0][1].shape
    label_w = 90
    img = Image.new("RGB", (label_w + T * (W * scale + 2), len(rows) * (H * scale + 2)), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for r, (label, video) in enumerate(rows):
        y = r * (H * scale + 2)
        draw.text((4, y + H * scale // 2 - 6), label, fill=(0, 0, 0))
        for t in range(T):
            fr = Image.fromarray((np.clip(video[t], 0, 1) * 255).astype(np.uint8)).resize(
                (W * scale, H * scale), Image.NEAREST)
            img.paste(fr, (label_w + t * (W * scale + 2), y))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def _encode_clip(video: np.ndarray) -> dict:
    clip = (np.clip(video, 0, 1) * 255).astype(np.uint8)
    return {"shape": list(clip.shape), "uint8_base64": base64.b64encode(clip.tobytes()).decode()}


def _decode_clip(d: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(d["uint8_base64"]), np.uint8).reshape(d["shape"])


def render_md(data: dict) -> str:
    sums, timing, cols = data["summary"], data["seconds_per_video"], list(data["summary"])
    shape = data["shape"]
    n = len(data["prompts"])
    lines = [
        f"# Sample model quality ({data['model_name']})",
        "",
        rio.provenance("bench/sample_quality.py", NAME, data),
        "",
        f"{n} grammar prompts, {shape['frames']} frames at {shape['height']}x{shape['width']}, "
        f"{data['steps']} steps, guidance {data['guidance']}, seeds {data['seed']}..{data['seed'] + n - 1}, "
        f"CPU float32, {data['threads']} thread(s). Random init = same configs, untrained weights. "
        "Frame strip of the first prompt: [sample_strip.png](sample_strip.png) (procedural data, trained, random).",
        "",
        "| metric | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for metric in sums[cols[0]]:
        lines.append(f"| {metric} | " + " | ".join(f"{sums[c][metric]:.3f}" for c in cols) + " |")
    lines.append("| render seconds / video | " + " | ".join(
        f"{timing[c]:.2f}" if c in timing else "-" for c in cols) + " |")
    rows = data["per_prompt"]["trained"]
    if "shape" not in rows[0]:
        lines += ["", "Per prompt (trained): detected colour / direction", "",
                  "| prompt | colour | direction | cos |", "|---|---|---|---|"]
        for pr, r in zip(data["prompts"], rows):
            lines.append(f"| {pr} | {r['colour']} | {r['direction']} | {r['direction_cos']:.2f} |")
        return "\n".join(lines) + "\n"
    lines += ["", "Shape: the grammar shape whose bounding-box fill ratio (circle pi/4, square 1, triangle 1/2) is "
              "nearest to the object's largest blob, per frame, the clip's most frequent one (99.6 % of procedural "
              "frames right). Frames: each frame judged on its own (`frame_attributes`): the object present and of "
              "the prompted colour, the border of the prompted background colour, the prompted shape. Worst case: "
              "the lowest share of one clip. Worst colour error: the largest RGB distance (0-255) of a frame's "
              "object core from the prompted colour (999: a frame without the object).", "",
              "Per prompt (trained): detected colour / shape / direction, and the frames right", "",
              "| prompt | seed | colour | shape | direction | cos | frames: colour / background / shape | "
              "worst colour error |", "|---|---|---|---|---|---|---|---|"]
    for i, (pr, r) in enumerate(zip(data["prompts"], rows)):
        lines.append(f"| {pr} | {data['seed'] + i} | {r['colour']} | {r['shape']} | {r['direction']} | "
                     f"{r['direction_cos']:.2f} | {r['colour_frames']:.2f} / {r['background_frames']:.2f} / "
                     f"{r['shape_frames']:.2f} | {r['worst_colour_error']:.0f} |")
    return "\n".join(lines) + "\n"


def write_strip(data: dict, path: Path) -> None:
    strip = data.get("strip")
    if strip:
        frame_strip([(label, _decode_clip(clip).astype(np.float32) / 255) for label, clip in strip], path)
        print(f"wrote {path}")


def add_case_args(ap: argparse.ArgumentParser) -> None:
    """The options of a run over (grammar prompt, seed) cases of the sample model (shared with fp8_quality)."""
    ap.add_argument("--model", default=str(ROOT / "samples" / "tiny-wan"))
    ap.add_argument("--n", type=int, default=16, help="(prompt, seed) cases")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_case_args(ap)
    rio.add_output_args(ap, NAME)
    args = ap.parse_args(argv)
    if args.report_only:
        data = rio.read_json(rio.source_json(args, NAME))
        table = render_md(data)
        rio.write_text(args.out / f"{NAME}.md", table)
        write_strip(data, args.out / STRIP)
        return table
    import torch

    torch.set_num_threads(args.threads)
    meta = json.loads((Path(args.model) / "vidrt.json").read_text())
    shape = dict(frames=meta["native_frames"], height=meta["height"], width=meta["width"])
    prompts = bench_prompts(args.n)

    pipes = {"trained": load_pipeline(args.model), "random init": random_pipeline(args.model, args.seed)}
    for p in pipes.values():
        p.set_progress_bar_config(disable=True)
    results: dict[str, list[dict]] = {}
    videos: dict[str, list[np.ndarray]] = {}
    timing = {}
    for name, pipe in pipes.items():
        t0 = time.time()
        videos[name] = [render(pipe, pr, steps=args.steps, guidance=args.guidance, seed=args.seed + i, **shape)
                        for i, pr in enumerate(prompts)]
        timing[name] = (time.time() - t0) / len(prompts)
        results[name] = [measure(v, pr) for v, pr in zip(videos[name], prompts)]
    # Reference: the procedural training data itself for the same prompts.
    ref = []
    for i, pr in enumerate(prompts):
        p = parse_caption(pr)
        ref.append(make_clip(10_000 + i, colour=p["colour"], shape=p["shape"], direction=p["direction"],
                             background=p["background"], **shape)[0])
    results["procedural data (reference)"] = [measure(v, pr) for v, pr in zip(ref, prompts)]

    model = Path(args.model).resolve()
    data = {
        **rio.metadata(argv), "model": str(model.relative_to(ROOT)) if model.is_relative_to(ROOT) else str(model),
        "model_name": model.name, "sample": meta, "shape": shape, "steps": args.steps, "guidance": args.guidance,
        "seed": args.seed, "threads": args.threads, "prompts": prompts,
        "summary": {k: {m: float(v) for m, v in summarise(rows).items()} for k, rows in results.items()},
        "seconds_per_video": timing,
        "per_prompt": {k: [{f: (bool(v) if isinstance(v, (bool, np.bool_)) else
                               float(v) if isinstance(v, (float, np.floating)) else v) for f, v in r.items()}
                           for r in rows] for k, rows in results.items()},
        "strip": [["data", _encode_clip(ref[0])], ["trained", _encode_clip(videos["trained"][0])],
                  ["random", _encode_clip(videos["random init"][0])]],
    }
    rio.write_json(args.out / f"{NAME}.json", data)
    table = render_md(data)
    rio.write_text(args.out / f"{NAME}.md", table)
    print(table)
    write_strip(data, args.out / STRIP)
    return table


if __name__ == "__main__":
    main()
