"""Long videos on one device: denoiser activation peak and VAE-decode host memory at 1x, 4x and 8x the
model's native frame count (context windows + streamed decode), resume-after-kill equality, and what the long
videos look like: per-frame colour / background / position against the prompt, the jump at context-window seams
vs inside a window, and the same per-frame figures for decode only (native latents tiled and decoded as one long
sequence), so the decoder's drift and the windows' seams are judged separately.

    python bench/long_video.py [--config samples/tiny.yaml] [--steps 8] [--prompts 8] [--out bench/results]
    python bench/long_video.py --report-only    # re-render long_video.md from long_video.json

All numbers come from one run of this script, side by side. Memory is measured with vidrt's tracker
(live tensor bytes on the CPU; allocator statistics on CUDA). The per-frame detectors are bench/sample_quality.py's.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import results_io as rio  # noqa: E402

NAME = "long_video"
MULTS = (1, 4, 8)


def frames_for(adapter, native: int, mult: int) -> int:
    """`mult` times the native length in latent frames, as a valid frame count."""
    latent = adapter.latent_frames(native) * mult
    return (latent - 1) * adapter.temporal_compression + 1


class Killed(Exception):
    pass


class Capture:
    """The runner writes an mp4; the bench wants the arrays: the uint8 frames each render writes and the latents
    it decodes, recorded while the `with` block runs."""

    def __init__(self, runner):
        self.runner, self.frames, self.latents = runner, [], []

    def __enter__(self):
        import numpy as np

        write, decode = self.runner.write_video, self.runner.decoded_frames
        self.originals = write, decode

        def write_video(path, frames, fps, size, **kw):
            frames = list(frames)
            self.frames.append(np.stack(frames))
            return write(path, frames, fps, size, **kw)

        def decoded_frames(pipe, adapter, latents, *rest):
            self.latents.append(latents.detach().cpu().clone())
            return decode(pipe, adapter, latents, *rest)

        self.runner.write_video, self.runner.decoded_frames = write_video, decoded_frames
        return self

    def __exit__(self, *exc):
        self.runner.write_video, self.runner.decoded_frames = self.originals


# ------------------------------------------------------------------------------------------- figures
def stat(values) -> dict:
    """Count, max and sum: what pooling over prompts needs for a max and a mean."""
    values = [float(v) for v in values]
    return {"n": len(values), "max": max(values, default=None), "sum": sum(values)}


def pooled(stats: list[dict]) -> dict:
    maxima = [s["max"] for s in stats if s["n"]]
    return {"n": sum(s["n"] for s in stats), "max": max(maxima, default=None), "sum": sum(s["sum"] for s in stats)}


def first(flags) -> int | None:
    """Index of the first False (the first wrong frame), None when every frame is right."""
    return next((i for i, ok in enumerate(flags) if not ok), None)


def frame_jumps(video):
    """Mean absolute difference between consecutive uint8 frames (0-255), one value per pair (t, t+1)."""
    import numpy as np

    return np.abs(np.diff(video.astype(np.float32), axis=0)).mean(axis=(1, 2, 3))


def track_steps(centroids, breaks: set[int]):
    """The centroid's step between consecutive frames and the change of that step (second difference), in
    pixels, over frames where the object is present; pairs in `breaks` (where the track restarts by
    construction) are left out, and so are the changes that involve them."""
    import numpy as np

    c = np.asarray(centroids, np.float32)
    steps = {t: c[t + 1] - c[t] for t in range(len(c) - 1) if t not in breaks and not np.isnan(c[t:t + 2]).any()}
    changes = [float(np.hypot(*(steps[t + 1] - steps[t]))) for t in steps if t + 1 in steps]
    return [float(np.hypot(*s)) for s in steps.values()], changes


def consistency(video, prompt: str, breaks: set[int] = frozenset()) -> dict:
    """Per-frame attributes of a uint8 video (bench/sample_quality.py's detectors) reduced to counts, worst
    frames and the first wrong frame, so prompts and lengths can be pooled and compared."""
    from sample_quality import frame_attributes, parse_caption

    p = parse_caption(prompt)
    attrs = frame_attributes(video.astype("float32") / 255, prompt)
    bg_ok = [a["background"] == p["background"] for a in attrs]
    colour_ok = [a["present"] and a["colour"] == p["colour"] for a in attrs]
    steps, changes = track_steps([a["centroid"] for a in attrs], breaks)
    return {
        "frames": len(attrs),
        "background_ok": sum(bg_ok), "first_wrong_background": first(bg_ok),
        "background_error": stat(a["background_error"] for a in attrs),
        "present": sum(a["present"] for a in attrs),
        "colour_ok": sum(colour_ok), "first_wrong_colour": first(colour_ok),
        "colour_error": stat(a["colour_error"] for a in attrs if a["present"]),
        "position_step": stat(steps), "position_change": stat(changes),
    }


def boundary_pairs(latent: int, tc: int, boundaries) -> set[int]:
    """Frame pairs (t, t+1) that straddle latent-frame boundary b (between latent frames b-1 and b): the last
    frame of latent b-1 and the first of latent b (latent 0 decodes to one frame, every later one to `tc`)."""
    return {tc * (b - 1) for b in boundaries if 0 < b < latent}


def seam_boundaries(adapter, cfg, frames: int, native: int):
    """Latent boundaries where a context window starts or ends, from vidrt's own window plan with the config's
    `long` settings (as the runner and the simulator apply them), and the plan (window and overlap)."""
    from vidrt.core.windows import window_plan, window_starts

    long = getattr(cfg, "long", None)
    plan = window_plan(adapter.spec, frames, native, getattr(long, "window", None), getattr(long, "overlap", None))
    if plan.total <= plan.window:
        return set(), plan
    starts = window_starts(plan.total, plan.window, plan.overlap)
    return set(starts) | {s + plan.window for s in starts}, plan


def seam_jumps(video, latent: int, tc: int, seams: set[int]) -> dict:
    """Consecutive-frame jumps at window seams, at every other pair, and at the other pairs that also straddle a
    latent-frame boundary (the decoder's own step between latent frames, without a seam)."""
    jumps = frame_jumps(video)
    at_seam = boundary_pairs(latent, tc, seams)
    at_latent = boundary_pairs(latent, tc, range(latent)) - at_seam
    return {"seam": stat(jumps[t] for t in sorted(at_seam)),
            "inside": stat(j for t, j in enumerate(jumps) if t not in at_seam),
            "inside_latent_boundary": stat(jumps[t] for t in sorted(at_latent))}


def takeover_pairs(windows: dict, latent: int, tc: int) -> set[int]:
    """Frame pairs (t, t+1) where a re-anchored decode window takes over (the runner's sidecar `decode_windows`):
    from its anchor (the frame before its first) through its last cross-faded frame into the next."""
    from vidrt.core.windows import DecodeWindows, first_frame

    w = DecodeWindows(windows["window_latent_frames"], windows["overlap_latent_frames"])
    return {t for s in w.starts(latent)[1:] for t in range(first_frame(s, tc) - 1, first_frame(s + w.overlap, tc))}


def split_jumps(video, pairs: set[int]) -> dict:
    jumps = frame_jumps(video)
    return {"takeover": stat(jumps[t] for t in sorted(pairs)),
            "elsewhere": stat(j for t, j in enumerate(jumps) if t not in pairs)}


def whole_decode(pipe, adapter, latents, prompt: str, windows: dict, tc: int) -> dict:
    """The render's latents decoded as one sequence (no decode windows): the same figures, and the jumps at the
    pairs where the windowed decode takes over, for comparison."""
    import numpy as np
    import torch

    from vidrt.run.video import to_uint8_frames

    with torch.no_grad():
        video = np.concatenate([to_uint8_frames(c) for c in adapter.decode_stream(pipe, latents)])
    return dict(**consistency(video, prompt), jumps=split_jumps(video, takeover_pairs(windows, latents.shape[2], tc)))


def decode_only(pipe, adapter, latents, mult: int):
    """The native latents tiled `mult` times along time and decoded as one sequence by the adapter's streaming
    decoder: the decoder's behaviour over a long clip with no context windows involved."""
    import numpy as np
    import torch

    from vidrt.run.video import to_uint8_frames

    with torch.no_grad():
        chunks = adapter.decode_stream(pipe, latents.repeat(1, 1, mult, 1, 1))
        return np.concatenate([to_uint8_frames(c) for c in chunks])


def decode_drift(video, native_video, latent: int, tc: int) -> dict:
    """Mean absolute difference (0-255) of each decoded frame from the native decode of the same latent frame,
    pooled and per repetition of the native latents (does it grow with the length, or only follow each restart?).
    A tiled latent frame k >= 1 repeats native latent k mod `latent`; copies of latent 0 are left out (in the
    native decode it is the causal decoder's one-frame first chunk, later copies decode to `tc` frames)."""
    import numpy as np

    reps: dict[int, list[float]] = {}
    for k in range(1, (len(video) - 1) // tc + 1):
        j = k % latent
        if j:
            ours, native = video[tc * k - tc + 1:tc * k + 1], native_video[tc * j - tc + 1:tc * j + 1]
            diff = np.abs(ours.astype(np.float32) - native.astype(np.float32)).mean(axis=(1, 2, 3))
            reps.setdefault(k // latent, []).extend(float(d) for d in diff)
    return dict(stat(d for r in reps.values() for d in r), per_repetition=[float(np.mean(r)) for r in reps.values()])


# ------------------------------------------------------------------------------------------- measuring
def render_lengths(args, adapter, native: int, prompts: list[str], tmp: Path,
                   overrides: tuple[str, ...] = (), mults: tuple[int, ...] = MULTS,
                   timed_against_base: bool = False) -> tuple[list, list, list]:
    """Every prompt at 1x / 4x / 8x through vidrt's runner, a freshly loaded pipeline per length (the memory row is
    the first prompt's render on it, as before the quality figures; memory does not depend on the words), with
    the config `overrides` (e.g. a step policy). `timed_against_base`: each render is preceded by the same one
    without the overrides, whose wall time is kept beside it (`base_seconds`): a time ratio from renders minutes
    apart follows the shared machine's speed, not the overrides. Returns the memory rows, the quality figures and
    each prompt's 1x frames and latents."""
    import vidrt.run.render as runner
    from vidrt.config import load_config

    tc = adapter.temporal_compression
    memory, quality, native_runs = [], [], []
    for mult in mults:
        frames = frames_for(adapter, native, mult)
        base = load_config(args.config, [f"steps={args.steps}", f"frames={frames}"])
        pipe = runner.load_pipeline(base, runner.resolve_device(base.devices), with_image=False)
        seams, plan = seam_boundaries(adapter, base, frames, native)
        latent = adapter.latent_frames(frames)
        videos = []
        for i, prompt in enumerate(prompts):
            settings = [f"steps={args.steps}", f"frames={frames}", f"prompt={prompt}", f"seed={i}"]
            cfg = load_config(args.config, [*settings, *overrides])
            base_seconds = None
            if timed_against_base:
                t0 = time.perf_counter()
                runner.render(load_config(args.config, settings), tmp / f"base{mult}-{i}.mp4", pipe=pipe,
                              show_progress=False)
                base_seconds = time.perf_counter() - t0
            with Capture(runner) as cap:
                t0 = time.perf_counter()
                result = runner.render(cfg, tmp / f"x{mult}-{i}.mp4", pipe=pipe, show_progress=False)
                seconds = time.perf_counter() - t0
            video = cap.frames[0]
            if i == 0:
                memory.append(memory_row(mult, frames, result.sidecar, seconds))
            if mult == 1:
                native_runs.append((video, cap.latents[0]))
            windows = result.sidecar.get("decode_windows")
            decoded = {}
            if windows:
                decoded = dict(decode_windows=windows,
                               decode_jumps=split_jumps(video, takeover_pairs(windows, latent, tc)),
                               whole_decode=whole_decode(pipe, adapter, cap.latents[0], prompt, windows, tc))
            videos.append(dict(prompt=prompt, seed=i, seconds=seconds, base_seconds=base_seconds,
                               **consistency(video, prompt),
                               jumps=seam_jumps(video, latent, tc, seams), policy=result.sidecar.get("policy"),
                               **decoded))
        quality.append(dict(mult=mult, frames=frames, windows=plan.windows, latent_frames=latent,
                            window_latent_frames=plan.window, overlap_latent_frames=plan.overlap,
                            seam_latent_boundaries=sorted(b for b in seams if 0 < b < latent), videos=videos))
    return memory, quality, native_runs


def decode_lengths(args, adapter, native_runs: list, prompts: list[str]) -> list[dict]:
    """Each prompt's native latents tiled to 1x / 4x / 8x and decoded alone: the per-frame figures, the jumps
    between consecutive frames and the drift from the native decode."""
    import vidrt.run.render as runner
    from vidrt.config import load_config

    base = load_config(args.config, [f"steps={args.steps}"])
    pipe = runner.load_pipeline(base, runner.resolve_device(base.devices), with_image=False)
    tc = adapter.temporal_compression
    decoded = []
    for mult in MULTS:
        videos = []
        for (native_video, latents), prompt in zip(native_runs, prompts):
            latent = latents.shape[2]
            video = decode_only(pipe, adapter, latents, mult)
            restarts = boundary_pairs(latent * mult, tc, range(latent, latent * mult, latent))
            jumps = stat(j for t, j in enumerate(frame_jumps(video)) if t not in restarts)
            videos.append(dict(prompt=prompt, **consistency(video, prompt, restarts), jumps=jumps,
                               drift=decode_drift(video, native_video, latent, tc)))
        decoded.append(dict(mult=mult, frames=len(video), videos=videos))
    return decoded


def roundtrip_lengths(args, adapter, native: int, prompts: list[str]) -> list[dict]:
    """Each prompt as procedural data 1x / 4x / 8x long (a native clip's speed on a torus: what the sample model's
    long stages train on), encoded by the pipeline's VAE and decoded by the streaming decoder: the VAE alone on a
    real long latent sequence, against the clip it came from (`error`: mean absolute difference per frame,
    0-255)."""
    import numpy as np
    import torch

    import vidrt.run.render as runner
    from sample_quality import parse_caption
    from vidrt.config import load_config
    from vidrt.models.wan_vae import latent_stats
    from vidrt.run.video import to_uint8_frames
    from vidrt_dev.sample_data import render_spec, sample_spec

    base = load_config(args.config, [f"steps={args.steps}"])
    pipe = runner.load_pipeline(base, runner.resolve_device(base.devices), with_image=False)
    out = []
    for mult in MULTS:
        frames = frames_for(adapter, native, mult)
        videos = []
        for i, prompt in enumerate(prompts):
            spec = sample_spec(20_000 + i, height=base.height, width=base.width, **parse_caption(prompt))
            clip = render_spec(spec, frames=frames, height=base.height, width=base.width, pace_frames=native,
                               wrap=True)
            x = torch.from_numpy(clip).permute(3, 0, 1, 2)[None] * 2 - 1
            with torch.no_grad():
                z = pipe.vae.encode(x).latent_dist.mode()
                mean, inv_std = latent_stats(pipe.vae.config, z.device, z.dtype)
                video = np.concatenate([to_uint8_frames(c) for c in adapter.decode_stream(pipe, (z - mean) * inv_std)])
            error = np.abs(video.astype(np.float32) - np.round(clip * 255)).mean(axis=(1, 2, 3))
            videos.append(dict(prompt=prompt, **consistency(video, prompt), jumps=stat(frame_jumps(video)),
                               error=stat(float(e) for e in error), error_last=float(error[-1])))
        out.append(dict(mult=mult, frames=frames, videos=videos))
    return out


def memory_row(mult: int, frames: int, sidecar: dict, seconds: float) -> dict:
    stages = {s["name"]: s for s in sidecar["stages"]}
    return dict(mult=mult, frames=frames, windows=(sidecar["long"] or {}).get("windows", 1),
                denoise_activation_bytes=stages["denoise"]["activation_bytes"],
                vae_decode_peak_bytes=stages["vae_decode"]["peak_bytes"],
                vae_decode_activation_bytes=stages["vae_decode"]["activation_bytes"], seconds=seconds)


def resume_check(args, adapter, native: int, tmp: Path) -> dict:
    """Kill a 4x render after step k, resume it: the frames must equal an uninterrupted run's."""
    import numpy as np

    import vidrt.run.render as runner
    from vidrt.config import load_config
    from vidrt.run.checkpoint import StepCheckpointer

    frames = frames_for(adapter, native, 4)
    cfg = load_config(args.config, [f"steps={args.steps}", f"frames={frames}"])
    k = args.steps // 2
    save = StepCheckpointer.save

    def killing_save(self, done, *a, **kw):
        save(self, done, *a, **kw)
        if done == k:
            raise Killed

    with Capture(runner) as cap:
        runner.render(cfg, tmp / "full.mp4", show_progress=False)
        StepCheckpointer.save = killing_save
        try:
            runner.render(cfg, tmp / "resumed.mp4", show_progress=False)
        except Killed:
            pass
        finally:
            StepCheckpointer.save = save
        runner.render(cfg, tmp / "resumed.mp4", show_progress=False, resume=True)
    diff = int(np.abs(cap.frames[0].astype(int) - cap.frames[1].astype(int)).max())
    return dict(kill_step=k, steps=args.steps, frames=frames, max_abs_diff=diff)


def simulated(base, adapter, native: int) -> list[dict]:
    """The same loop on a simulated accelerator: pipeline loop tensors on it vs on the host
    (vidrt.engine.long.loop_on_host)."""
    if base.model.family != "wan":
        return []
    from vidrt.memory.simulate.long import wan_long_loop_peak

    rows = []
    for mult in MULTS:
        frames = frames_for(adapter, native, mult)
        r = {host: wan_long_loop_peak(base.model.path, frames=frames, height=base.height, width=base.width,
                                      loop_on_host=host, steps=2, guidance=base.guidance) for host in (False, True)}
        rows.append(dict(mult=mult, frames=frames, windows=r[True]["windows"],
                         loop_on_device_bytes=r[False]["accelerator_peak_bytes"],
                         loop_on_host_bytes=r[True]["accelerator_peak_bytes"]))
    return rows


def palette_gap() -> float:
    """The smallest RGB distance between two palette colours (0-255): the scale of a colour error."""
    from itertools import combinations

    from sample_quality import PALETTE, palette_distance

    return min(palette_distance(PALETTE[a], b) for a, b in combinations(PALETTE, 2))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="samples/tiny.yaml")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=8,
                        help="grammar prompts for the quality figures (bench/sample_quality.py's bench_prompts)")
    parser.add_argument("--policy", default="taylor_gate",
                        help="a step policy (acceleration.policy) rendered at every length too, with the same figures; "
                             "'none' leaves it out")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads; 1 by default: on 2 shared cores two threads wait on each other "
                             "whenever another process runs, and a render takes many times longer")
    rio.add_output_args(parser, NAME)
    args = parser.parse_args(argv)
    if args.report_only:
        rio.write_text(args.out / f"{NAME}.md", render(rio.read_json(rio.source_json(args, NAME))))
        return

    import torch

    from sample_quality import bench_prompts
    from vidrt.cli import _quiet_libraries
    from vidrt.config import load_config
    from vidrt.models import get_adapter

    _quiet_libraries()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    base = load_config(args.config, [f"steps={args.steps}"])
    adapter = get_adapter(base.model.family)
    native = adapter.spec.native_frame_count(base.model.path)
    tmp = Path(tempfile.mkdtemp(prefix="vidrt-long-"))
    prompts = bench_prompts(args.prompts)
    rows, quality, native_runs = render_lengths(args, adapter, native, prompts, tmp)
    decoded = decode_lengths(args, adapter, native_runs, prompts)
    roundtrip = roundtrip_lengths(args, adapter, native, prompts)
    without_start_rule = None
    if adapter.window_start_latents:     # the same windows keeping their first latent frames
        kept = adapter.window_start_latents
        type(adapter).window_start_latents = 0
        try:
            without_start_rule = render_lengths(args, adapter, native, prompts, tmp, mults=MULTS[1:])[1]
        finally:
            type(adapter).window_start_latents = kept
    # the same windows with the other choice of noise reuse (`long.noise_reschedule`; the family's default above)
    reuse = not adapter.long_noise_reschedule
    other_noise = dict(reschedule=reuse, quality=render_lengths(
        args, adapter, native, prompts, tmp, overrides=(f"long.noise_reschedule={str(reuse).lower()}",),
        mults=MULTS[1:])[1])
    with_policy = None
    if args.policy != "none":
        with_policy = dict(policy=args.policy, quality=render_lengths(
            args, adapter, native, prompts, tmp, overrides=(f"acceleration.policy={args.policy}",),
            timed_against_base=True)[1])
    data = dict(rio.metadata(argv), config=args.config, model=str(base.model.path), family=base.model.family,
                native=native, height=base.height, width=base.width, steps=args.steps, guidance=base.guidance,
                threads=args.threads, temporal_compression=adapter.temporal_compression, palette_gap=palette_gap(),
                prompts=prompts, rows=rows, resume=resume_check(args, adapter, native, tmp),
                simulated=simulated(base, adapter, native), quality=quality, decode_only=decoded,
                with_policy=with_policy, roundtrip=roundtrip, start_latents=adapter.window_start_latents,
                without_start_rule=without_start_rule, other_noise=other_noise)
    data["seconds_total"] = time.perf_counter() - started
    rio.write_json(args.out / f"{NAME}.json", data)
    text = render(data)
    print(text)
    rio.write_text(args.out / f"{NAME}.md", text)


# ------------------------------------------------------------------------------------------- report
def mean(s: dict) -> float:
    return s["sum"] / s["n"] if s["n"] else math.nan


def fmt(value, spec: str = ".1f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def table_head(header: str) -> list[str]:
    """A markdown table's header row and separator for `header` ("a | b | c"): one separator cell a column."""
    return [f"| {header} |", "|" + "---|" * (header.count(" | ") + 1)]


def max_mean(s: dict) -> str:
    return f"{fmt(s['max'])} / {fmt(mean(s))}" if s["n"] else "-"


def earliest(videos: list[dict], key: str) -> str:
    wrong = [v[key] for v in videos if v[key] is not None]
    return str(min(wrong)) if wrong else "none"


def consistency_cells(videos: list[dict]) -> list[str]:
    """Pooled over prompts: shares of frames, the worst prompt's share, the earliest wrong frame and the worst
    frames' errors; the position's largest step and largest change of step."""
    frames = sum(v["frames"] for v in videos)

    def share(key):
        return f"{sum(v[key] for v in videos) / frames:.2f}"

    def worst(key):
        return f"{min(v[key] / v['frames'] for v in videos):.2f}"

    step, change = pooled([v["position_step"] for v in videos]), pooled([v["position_change"] for v in videos])
    return [share("background_ok"), worst("background_ok"), earliest(videos, "first_wrong_background"),
            fmt(pooled([v["background_error"] for v in videos])["max"], ".0f"),
            share("present"), share("colour_ok"), worst("colour_ok"), earliest(videos, "first_wrong_colour"),
            fmt(pooled([v["colour_error"] for v in videos])["max"], ".0f"),
            fmt(step["max"]), max_mean(change)]


CONSISTENCY_HEAD = ("background right | worst prompt | earliest wrong frame | largest background error | "
                    "object present | object right colour | worst prompt | earliest wrong frame | "
                    "largest colour error | largest step px | change of step px max / mean")
CONSISTENCY_COLUMNS = (
    "Columns, over all prompts' frames at that length: *background right*: share of frames whose border colour "
    "(median of the border pixels) is nearest to the prompted background in the palette; *worst prompt*: the "
    "lowest such share of one prompt; *earliest wrong frame*: the first frame index where any prompt's frame is "
    "wrong (none: every frame right); *largest background error*: the worst frame's RGB distance of the border "
    "colour from the prompted one (0-255 units; the closest two palette colours are {palette_gap:.0f} apart); *object present*: "
    "share of frames with at least 3 pixels off that frame's background; *object right colour*: share of frames "
    "where the object is present and its core pixels' median colour is nearest to the prompted colour; "
    "*largest colour error*: the worst present frame's distance of that colour from the prompted one; "
    "*largest step*: the largest centroid move between consecutive frames (pixels, frames are "
    "{width} wide); *change of step*: how much the move changes from one frame to the next (second difference of the "
    "centroid track, pixels): 0 for the straight, steady motion of the training data.")


def render(data: dict) -> str:
    return "\n".join(memory_section(data) + quality_section(data))


def memory_section(data: dict) -> list[str]:
    rows, sim = data["rows"], data["simulated"]
    base_act, base_vae = rows[0]["denoise_activation_bytes"], rows[0]["vae_decode_peak_bytes"]
    lines = [
        "# Long videos: context windows + streamed VAE decode",
        "",
        rio.provenance("bench/long_video.py", NAME, data),
        "",
        f"Model: `{data['model']}` ({data['family']}, native {data['native']} frames), {data['height']}x{data['width']}, "
        f"{data['steps']} steps, CFG {data['guidance']}, {data['threads']} CPU thread(s), CPU tracker (live tensor bytes), all from one run.",
        "",
        "| length | frames | windows | denoise activations | ratio vs 1x | VAE decode peak (host) | ratio vs 1x | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        act, vae_peak = r["denoise_activation_bytes"], r["vae_decode_peak_bytes"]
        lines.append(f"| {r['mult']}x | {r['frames']} | {r['windows']} | {act / 2**20:.3f} MiB | {act / base_act:.2f}x | "
                     f"{vae_peak / 2**20:.3f} MiB | {vae_peak / base_vae:.2f}x | {r['seconds']:.1f} |")
    res = data["resume"]
    lines += ["", f"Resume after a kill at step {res['kill_step']}/{res['steps']} ({res['frames']} frames): "
              f"max abs difference of frames vs the uninterrupted run = **{res['max_abs_diff']}**.", ""]
    if sim:
        dev0, host0 = sim[0]["loop_on_device_bytes"], sim[0]["loop_on_host_bytes"]
        lines += [
            "## Accelerator memory of the denoise loop (simulated)",
            "",
            "On the CPU the loop and the windows share one memory, so the table above counts the pipeline's "
            "full-length loop tensors (latents, both CFG predictions, the guided prediction, the scheduler's "
            "result) together with one window's activations. On an accelerator `long.loop_on_host` (auto) keeps "
            "the loop on the host. The real `WanPipeline` loop below runs under FakeTensorMode with the "
            "transformer on a stand-in accelerator (the meta device; sliced; 2 steps, CFG) and the tracker's "
            "counter counting only its storages (`vidrt/memory/simulate/long.py`).",
            "",
            "| length | frames | windows | loop on the accelerator | ratio vs 1x | loop on the host | ratio vs 1x |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in sim:
            dev, host = r["loop_on_device_bytes"], r["loop_on_host_bytes"]
            lines.append(f"| {r['mult']}x | {r['frames']} | {r['windows']} | {dev / 2**20:.3f} MiB | {dev / dev0:.2f}x | "
                         f"{host / 2**20:.3f} MiB | {host / host0:.2f}x |")
        lines.append("")
    return lines


def quality_section(data: dict) -> list[str]:
    quality, decoded, prompts = data["quality"], data["decode_only"], data["prompts"]
    lines = [
        "## What the long videos look like",
        "",
        f"{len(prompts)} grammar prompts (bench/sample_quality.py's `bench_prompts`, seeds 0..{len(prompts) - 1}), "
        f"each rendered at every length by the runner as above ({data['steps']} steps: the rendering dominates "
        f"this script's {data['seconds_total'] / 60:.1f} minutes), every frame judged on its own by "
        "bench/sample_quality.py's detectors against its prompt (`frame_attributes`).",
        "",
        "### Per-frame consistency of the rendered videos",
        "",
        *table_head("length | frames | windows | " + CONSISTENCY_HEAD),
    ]
    for q in quality:
        lines.append(f"| {q['mult']}x | {q['frames']} | {q['windows']} | "
                     + " | ".join(consistency_cells(q["videos"])) + " |")
    lines += ["", CONSISTENCY_COLUMNS.format(width=data["width"], palette_gap=data["palette_gap"]), ""]
    lines += seam_section(quality, decoded, data["temporal_compression"])
    lines += [
        "### Decode only: the native latents tiled and decoded as one sequence",
        "",
        "Each prompt's 1x latents (from the render above) repeated whole along time to the length "
        "(`latents.repeat`) and decoded by the adapter's streaming decoder (`decode_stream`, the causal feature "
        "cache carried over the whole sequence): no context windows, so what goes wrong here is the decoder's. "
        "The position columns leave out the pairs where a repetition starts over (the object jumps back by "
        "construction). *Drift*: mean absolute difference (0-255) of each decoded frame from the 1x decode of the "
        "same latent frame, worst frame / mean, and the mean over the second and over the last repetition: a "
        "decoder that drifts with the length gets further off with every repetition (copies of latent frame 0 "
        "are left out: alone at the start it decodes to one frame, later to "
        f"{data['temporal_compression']}).",
        "",
        *table_head("length | frames | " + CONSISTENCY_HEAD + " | drift max / mean | drift mean: 2nd / last "
                    "repetition"),
    ]
    for d in decoded:
        lines.append(f"| {d['mult']}x | {d['frames']} | " + " | ".join(consistency_cells(d["videos"])) + " | "
                     + max_mean(pooled([v["drift"] for v in d["videos"]])) + " | " + repetition_drift(d) + " |")
    lines += decode_window_section(data)
    lines += start_rule_section(data)
    lines += noise_section(data)
    lines += roundtrip_section(data)
    lines += policy_section(data)
    lines += ["", *per_prompt_section(quality, decoded), ""]
    return lines


def decode_window_section(data: dict) -> list[str]:
    rows = [q for q in data["quality"] if q["videos"] and q["videos"][0].get("decode_windows")]
    if not rows:
        return []
    lines = [
        "### Decode windows vs the whole sequence",
        "",
        "The renders above decode their latents in the re-anchored windows the model declares (`long.decode_window: "
        "auto`, vidrt.models.wan_vae: each window after the first starts the causal decoder afresh from the frame "
        "before it, encoded alone, and cross-fades the frames it shares with the window before). The same latents "
        "decoded as one sequence through one causal cache (`long.decode_window: off`), side by side. *Take-over*: "
        "the frame pairs from a window's anchor through its last cross-faded frame; *elsewhere*: every other pair "
        "(jumps as above, 0-255).",
        "",
        *table_head("length | decode windows (latent frames, overlap) | decode | " + CONSISTENCY_HEAD
                    + " | jump at take-overs max / mean | elsewhere max / mean"),
    ]
    for q in rows:
        w = q["videos"][0]["decode_windows"]
        label = f"{w['windows']} ({w['window_latent_frames']}, {w['overlap_latent_frames']})"
        for name, videos, jumps in (
                ("windows", q["videos"], [v["decode_jumps"] for v in q["videos"]]),
                ("whole", [v["whole_decode"] for v in q["videos"]], [v["whole_decode"]["jumps"] for v in q["videos"]])):
            take, rest = pooled([j["takeover"] for j in jumps]), pooled([j["elsewhere"] for j in jumps])
            lines.append(f"| {q['mult']}x | {label} | {name} | " + " | ".join(consistency_cells(videos))
                         + f" | {max_mean(take)} | {max_mean(rest)} |")
    return lines + [""]


def start_rule_section(data: dict) -> list[str]:
    rows = data.get("without_start_rule")
    if not rows:
        return []
    by_mult = {q["mult"]: q for q in data["quality"]}
    lines = [
        "### Windows that keep their first latent frames",
        "",
        f"The renders above leave the first {data['start_latents']} latent frame(s) of every window after the first "
        "to the window before (`window_start_latents`: the causal Wan VAE encodes video frame 0 alone into latent "
        "frame 0, so the denoiser makes every window's first latent frame a clip's first frame). The same renders "
        "with those frames blended like the others, side by side (same prompts, seeds and run):",
        "",
    ]
    return lines + side_by_side("rule", [("off", rows), ("on", [by_mult[q["mult"]] for q in rows])])


def noise_section(data: dict) -> list[str]:
    other = data.get("other_noise")
    if not other:
        return []
    used = not other["reschedule"]
    by_mult = {q["mult"]: q for q in data["quality"]}
    rows = [("on" if used else "off", [by_mult[q["mult"]] for q in other["quality"]]),
            ("on" if other["reschedule"] else "off", other["quality"])]
    return [
        "### Noise reuse across windows",
        "",
        f"The renders above draw {'reused' if used else 'fresh'} noise for the windows after the first (the "
        f"{data['family']} family's default); the same renders with `long.noise_reschedule: "
        f"{str(other['reschedule']).lower()}`, side by side (same prompts, seeds and run). Reuse (FreeNoise): every "
        "later window starts from a shuffle of the noise frames of the window before, instead of noise of its own.",
        "",
    ] + side_by_side("noise reuse", sorted(rows))


def side_by_side(label: str, variants: list[tuple[str, list[dict]]]) -> list[str]:
    """One row per length and variant (name, the quality rows of its renders): the consistency figures and the
    jumps at window seams."""
    lines = table_head(f"length | windows | {label} | " + CONSISTENCY_HEAD + " | jump at seams max / mean")
    for i in range(len(variants[0][1])):
        for name, rows in variants:
            r = rows[i]
            seam = pooled([v["jumps"]["seam"] for v in r["videos"]])
            lines.append(f"| {r['mult']}x | {r['windows']} | {name} | " + " | ".join(consistency_cells(r["videos"]))
                         + f" | {max_mean(seam)} |")
    return lines + [""]


def roundtrip_section(data: dict) -> list[str]:
    rows = data.get("roundtrip")
    if not rows:
        return []
    lines = [
        "### The VAE alone on real long clips: procedural data encoded and decoded",
        "",
        "Each prompt as procedural data of that length (a native clip's speed, wrapping around the frame edges: "
        "the data the sample model's long stages train on), encoded by the model's VAE and decoded by the streaming "
        "decoder as one sequence. Unlike the tiled latents above, these are the latents of a real long clip, so "
        "what goes wrong here is the VAE's own drift over the length. *Error*: mean absolute difference of a "
        "decoded frame from the clip's frame (0-255), worst frame / mean, and the last frame's.",
        "",
        *table_head("length | frames | " + CONSISTENCY_HEAD + " | jump max / mean | error max / mean | error of the "
                    "last frame"),
    ]
    for r in rows:
        vids = r["videos"]
        last = sum(v["error_last"] for v in vids) / len(vids)
        lines.append(f"| {r['mult']}x | {r['frames']} | " + " | ".join(consistency_cells(vids)) + " | "
                     + max_mean(pooled([v["jumps"] for v in vids])) + " | "
                     + max_mean(pooled([v["error"] for v in vids])) + f" | {last:.1f} |")
    return lines + [""]


def policy_section(data: dict) -> list[str]:
    """The same renders with a step policy: consistency, seam jumps, the blocks it evaluated and its time."""
    wp = data.get("with_policy")
    if not wp:
        return []
    lines = [
        f"### With a step policy: `acceleration.policy: {wp['policy']}` (its defaults)",
        "",
        "The renders above again, each window and CFG stream a policy stream of its own "
        "(docs/POLICIES.md, \"Long videos\"). *Blocks evaluated*: the share of the transformer's blocks the policy "
        "ran, over all windows and steps; *time*: its renders' wall seconds over the renders without it, same "
        "prompts and seeds, in this run" + (", each rendered just before it (the shared machine's speed drifts over "
        "a run)." if paired_data(wp) else "."),
        "",
        *table_head("length | windows | " + CONSISTENCY_HEAD + " | jump at seams max / mean | jump inside max / mean "
                    "| blocks evaluated | time vs no policy"),
    ]
    for q, base in zip(wp["quality"], data["quality"]):
        vids = q["videos"]
        seam, inside = (pooled([v["jumps"][k] for v in vids]) for k in ("seam", "inside"))
        evaluated = sum(v["policy"]["blocks_evaluated"] for v in vids) / sum(v["policy"]["blocks_total"] for v in vids)
        ratio = sum(v["seconds"] for v in vids) / sum(v["base_seconds"] if paired_data(wp) else b["seconds"]
                                                      for v, b in zip(vids, base["videos"]))
        lines.append(f"| {q['mult']}x | {q['windows']} | " + " | ".join(consistency_cells(vids))
                     + f" | {max_mean(seam)} | {max_mean(inside)} | {evaluated:.2f} | {ratio:.2f}x |")
    return lines + [""]


def paired_data(with_policy: dict) -> bool:
    """Whether each policy render was timed against the same render without it, run just before (older data:
    against the renders of the first pass, minutes apart)."""
    return all(v.get("base_seconds") for q in with_policy["quality"] for v in q["videos"])


def repetition_drift(d: dict) -> str:
    """Mean drift of the second and of the last repetition, averaged over prompts ("-" with one repetition)."""
    if d["mult"] < 2:
        return "-"
    second, last = (sum(v["drift"]["per_repetition"][i] for v in d["videos"]) / len(d["videos"]) for i in (1, -1))
    return f"{second:.1f} / {last:.1f}"


def seam_section(quality: list[dict], decoded: list[dict], tc: int) -> list[str]:
    plan = quality[-1]
    lines = [
        "### Jumps at context-window seams vs inside a window",
        "",
        "Jump: mean absolute difference between consecutive frames (0-255), over all prompts' frame pairs. Seam "
        "pairs: the last frame of a latent frame and the first of the next where a window starts or ends there "
        f"(vidrt.core.windows' plan for this length: windows of {plan['window_latent_frames']} latent frames "
        f"overlapping by {plan['overlap_latent_frames']}; latent frame k >= 1 decodes to frames {tc}k-{tc - 1}..{tc}k). "
        "Inside: every other pair; of which at a latent-frame boundary: the decoder's step between latent frames "
        "without a seam, for comparison. Decode only: every pair of the decode-only video of that length (below; "
        "no windows; the pairs where a repetition starts over left out).",
        "",
        "| length | windows | seam latent boundaries | seam pairs | jump at seams max / mean | pairs inside | "
        "jump inside max / mean | inside, at a latent boundary: pairs | max / mean | decode only: jump max / mean |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for q, d in zip(quality, decoded):
        seam, inside, at_latent = (pooled([v["jumps"][k] for v in q["videos"]])
                                   for k in ("seam", "inside", "inside_latent_boundary"))
        bounds = ", ".join(map(str, q["seam_latent_boundaries"])) or "none"
        lines.append(f"| {q['mult']}x | {q['windows']} | {bounds} | {seam['n']} | {max_mean(seam)} | "
                     f"{inside['n']} | {max_mean(inside)} | {at_latent['n']} | {max_mean(at_latent)} | "
                     f"{max_mean(pooled([v['jumps'] for v in d['videos']]))} |")
    return lines + [""]


def per_prompt_section(quality: list[dict], decoded: list[dict]) -> list[str]:
    lines = [
        "### Per prompt: frames right (first wrong frame)",
        "",
        "| prompt | seed | length | rendered: background | rendered: object | decode only: background | "
        "decode only: object |",
        "|---|---|---|---|---|---|---|",
    ]

    def cell(v, ok, wrong):
        return f"{v[ok]}/{v['frames']}" + (f" ({v[wrong]})" if v[wrong] is not None else "")

    for i, prompt in enumerate(q["prompt"] for q in quality[0]["videos"]):
        for q, d in zip(quality, decoded):
            r, o = q["videos"][i], d["videos"][i]
            lines.append(f"| {prompt} | {r['seed']} | {q['mult']}x | "
                         f"{cell(r, 'background_ok', 'first_wrong_background')} | "
                         f"{cell(r, 'colour_ok', 'first_wrong_colour')} | "
                         f"{cell(o, 'background_ok', 'first_wrong_background')} | "
                         f"{cell(o, 'colour_ok', 'first_wrong_colour')} |")
    return lines


if __name__ == "__main__":
    main()
