"""Long videos on one device: denoiser activation peak and VAE-decode host memory at 1x, 4x and 8x the
model's native frame count (context windows + streamed decode), and resume-after-kill equality.

    python bench/long_video.py [--config samples/tiny.yaml] [--steps 8] [--out bench/results]
    python bench/long_video.py --report-only    # re-render long_video.md from long_video.json

All numbers come from one run of this script, side by side. Memory is measured with vidrt's tracker
(live tensor bytes on the CPU; allocator statistics on CUDA).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import results_io as rio  # noqa: E402

NAME = "long_video"


def frames_for(adapter, native: int, mult: int) -> int:
    """`mult` times the native length in latent frames, as a valid frame count."""
    latent = adapter.latent_frames(native) * mult
    return (latent - 1) * adapter.temporal_compression + 1


class Killed(Exception):
    pass


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="samples/tiny.yaml")
    parser.add_argument("--steps", type=int, default=8)
    rio.add_output_args(parser, NAME)
    args = parser.parse_args(argv)
    if args.report_only:
        rio.write_text(args.out / f"{NAME}.md", render(rio.read_json(rio.source_json(args, NAME))))
        return

    import numpy as np

    import vidrt.run.render as runner
    from vidrt.cli import _quiet_libraries
    from vidrt.config import load_config
    from vidrt.models import get_adapter
    from vidrt.run.checkpoint import StepCheckpointer

    _quiet_libraries()

    base = load_config(args.config, [f"steps={args.steps}"])
    adapter = get_adapter(base.model.family)
    pipe = runner.load_pipeline(base, runner.resolve_device(base.devices), with_image=False)
    native = adapter.native_frame_count(pipe)
    tmp = Path(tempfile.mkdtemp(prefix="vidrt-long-"))
    rows = []
    captured: list[np.ndarray] = []
    original_write = runner.write_video

    def capture(path, frames, fps, size, **kw):
        frames = list(frames)
        captured.append(np.stack(frames))
        return original_write(path, frames, fps, size, **kw)

    runner.write_video = capture
    for mult in (1, 4, 8):
        frames = frames_for(adapter, native, mult)
        cfg = load_config(args.config, [f"steps={args.steps}", f"frames={frames}"])
        pipe = runner.load_pipeline(cfg, runner.resolve_device(cfg.devices), with_image=False)
        t0 = time.perf_counter()
        result = runner.render(cfg, tmp / f"x{mult}.mp4", pipe=pipe, show_progress=False)
        seconds = time.perf_counter() - t0
        stages = {s["name"]: s for s in result.sidecar["stages"]}
        rows.append((mult, frames, result.sidecar["long"], stages["denoise"]["activation_bytes"],
                     stages["vae_decode"]["peak_bytes"], stages["vae_decode"]["activation_bytes"], seconds))

    # resume after a kill at step k: identical frames
    cfg = load_config(args.config, [f"steps={args.steps}", f"frames={frames_for(adapter, native, 4)}"])
    k = args.steps // 2
    captured.clear()
    runner.render(cfg, tmp / "full.mp4", show_progress=False)
    save = StepCheckpointer.save

    def killing_save(self, done, *a, **kw):
        save(self, done, *a, **kw)
        if done == k:
            raise Killed

    StepCheckpointer.save = killing_save
    try:
        runner.render(cfg, tmp / "resumed.mp4", show_progress=False)
    except Killed:
        pass
    StepCheckpointer.save = save
    runner.render(cfg, tmp / "resumed.mp4", show_progress=False, resume=True)
    resume_diff = int(np.abs(captured[0].astype(int) - captured[1].astype(int)).max())

    # the same loop on a simulated accelerator: pipeline loop tensors on it vs on the host (vidrt.engine.long.loop_on_host)
    sim_rows = []
    if base.model.family == "wan":
        from vidrt.memory.simulate.long import wan_long_loop_peak

        for mult in (1, 4, 8):
            frames = frames_for(adapter, native, mult)
            sim_rows.append((mult, frames, {host: wan_long_loop_peak(
                base.model.path, frames=frames, height=base.height, width=base.width, loop_on_host=host,
                steps=2, guidance=base.guidance) for host in (False, True)}))

    data = dict(rio.metadata(argv), config=args.config, model=str(base.model.path), family=base.model.family,
                native=native, height=base.height, width=base.width, steps=args.steps, guidance=base.guidance,
                rows=[dict(mult=mult, frames=frames, windows=(long_info or {}).get("windows", 1),
                           denoise_activation_bytes=act, vae_decode_peak_bytes=vae_peak,
                           vae_decode_activation_bytes=vae_act, seconds=seconds)
                      for mult, frames, long_info, act, vae_peak, vae_act, seconds in rows],
                resume=dict(kill_step=k, steps=args.steps, frames=frames_for(adapter, native, 4),
                            max_abs_diff=resume_diff),
                simulated=[dict(mult=mult, frames=frames, windows=r[True]["windows"],
                                loop_on_device_bytes=r[False]["accelerator_peak_bytes"],
                                loop_on_host_bytes=r[True]["accelerator_peak_bytes"])
                           for mult, frames, r in sim_rows])
    rio.write_json(args.out / f"{NAME}.json", data)
    text = render(data)
    print(text)
    rio.write_text(args.out / f"{NAME}.md", text)


def render(data: dict) -> str:
    rows, sim = data["rows"], data["simulated"]
    base_act, base_vae = rows[0]["denoise_activation_bytes"], rows[0]["vae_decode_peak_bytes"]
    lines = [
        "# Long videos: context windows + streamed VAE decode",
        "",
        rio.provenance("bench/long_video.py", NAME, data),
        "",
        f"Model: `{data['model']}` ({data['family']}, native {data['native']} frames), {data['height']}x{data['width']}, "
        f"{data['steps']} steps, CFG {data['guidance']}, CPU tracker (live tensor bytes), all from one run.",
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
    return "\n".join(lines)


if __name__ == "__main__":
    main()
