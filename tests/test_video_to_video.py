"""Video-to-video (`input_video:`, `strength`): the input read with decord a chunk at a time, encoded chunk by
chunk, noised as diffusers' own video-to-video pipelines noise it, and denoised by those pipelines; compared with
the diffusers pipeline given the whole clip. Long inputs go through the context windows; bad inputs are one
line before any model loads."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vidrt.run.render as runner
from vidrt.config import load_config
from vidrt.core.errors import VidrtError
from vidrt.core.video_input import VideoInput, read_video
from vidrt.models import get_adapter
from vidrt.models.base import RenderRequest
from vidrt.models.wan_vae import encode_stream
from vidrt.run.video import write_video

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "samples/tiny.yaml"


def _clip(path: Path, frames: int = 17, height: int = 40, width: int = 48) -> Path:
    """A red square moving right on blue (an odd size, so the pipelines' processor resizes it)."""
    video = []
    for i in range(frames):
        f = np.zeros((height, width, 3), np.uint8)
        f[..., 2] = 200
        f[8:24, 2 + 2 * i:18 + 2 * i] = (220, 0, 0)
        video.append(f)
    write_video(path, video, 8, (height, width))
    return path


def reference_video_pipeline(adapter, pipe):
    """diffusers' own video-to-video pipeline on `pipe`'s components. WanVideoToVideoPipeline derives its spatial
    factor from the VAE's downsampling levels (8): given the Wan 2.2 VAE's own (16, its patchify included) it
    runs the TI2V twin as designed."""
    if adapter.family != "wan":
        return adapter.video_pipeline(pipe)
    from diffusers import WanVideoToVideoPipeline
    from diffusers.video_processor import VideoProcessor

    video = WanVideoToVideoPipeline.from_pipe(pipe)
    video.vae_scale_factor_spatial = pipe.vae.config.scale_factor_spatial
    video.video_processor = VideoProcessor(vae_scale_factor=video.vae_scale_factor_spatial)
    return video


def vidrt_latents(adapter, pipe, req):
    """The render's own stages (encode the clip chunk by chunk, noise it, denoise) up to the final latents."""
    from rich.console import Console

    from vidrt.memory.tracker import MemoryTracker
    from vidrt.run.stages import encode_and_denoise

    with MemoryTracker("cpu") as tracker:
        return encode_and_denoise(adapter.video_pipeline(pipe), adapter, req, torch.device("cpu"), tracker,
                                  Console(quiet=True), show_progress=False)


# measured 0 / 1.5e-6 / 3.7e-6; "wan-2.2-ti2v": the Wan 2.2 VAE (patchified input, 16x, 48 channels) at 64 px.
# Wan runs video-to-video on WanPipeline itself, its schedule cut at the strength's first step
# (video_schedule_cut); on TI2V that pipeline gives one timestep per token (expand_timesteps), diffusers'
# video-to-video pipeline one per sample: the same values through differently shaped time embeddings
@pytest.mark.parametrize("family,tolerance", [("wan", 0.0), ("wan-2.2-ti2v", 1e-5), ("animatediff", 1e-4)])
def test_latents_equal_diffusers_video_to_video_pipeline(tmp_path, family, tolerance):
    family, _, variant = family.partition("-")
    adapter = get_adapter(family)
    pipe = adapter.tiny(0, **({"variant": variant} if variant else {}))
    size = 64 if variant else 32
    clip = VideoInput.open(_clip(tmp_path / "in.mp4", frames=9))
    frames = [Image.fromarray(f) for f in read_video(clip.path)]
    extra = {"max_sequence_length": 16} if family == "wan" else {}
    common = dict(prompt="a red circle", negative_prompt="", height=size, width=size, num_inference_steps=5,
                  guidance_scale=5.0, output_type="latent", **extra)
    reference = reference_video_pipeline(adapter, pipe)(video=frames, strength=0.6,
                                                        generator=torch.Generator().manual_seed(0), **common).frames
    req = RenderRequest(prompt="a red circle", negative_prompt="", frames=9, height=size, width=size, steps=5,
                        guidance=5.0, seed=0, video=clip, strength=0.6)
    out = vidrt_latents(adapter, pipe, req)
    assert req.denoise_steps == 3 and out.shape == reference.shape
    assert (out - reference).abs().max().item() <= tolerance


def test_wan22_a14b_video_to_video_runs_each_expert_on_its_steps(tmp_path):
    """Wan 2.2 A14B: the steps the strength leaves run the high-noise expert at or above the boundary timestep and
    the low-noise expert (transformer_2) below it, twice each with CFG - diffusers' WanVideoToVideoPipeline has no
    second expert and would run the first at every step."""
    adapter = get_adapter("wan")
    pipe = adapter.tiny(0, variant="2.2-a14b")
    calls = {"transformer": [], "transformer_2": []}
    for name in calls:
        getattr(pipe, name).register_forward_pre_hook(
            lambda m, a, kw, name=name: calls[name].append(float(kw["timestep"].flatten()[0])), with_kwargs=True)
    clip = VideoInput.open(_clip(tmp_path / "in.mp4", frames=9))
    req = RenderRequest(prompt="a red circle", negative_prompt="", frames=9, height=32, width=32, steps=8,
                        guidance=5.0, seed=0, video=clip, strength=0.75)
    out = vidrt_latents(adapter, pipe, req)
    schedule = type(pipe.scheduler).from_config(pipe.scheduler.config)
    schedule.set_timesteps(8)
    run = [float(t) for t in schedule.timesteps[8 - req.denoise_steps:]]
    boundary = pipe.config.boundary_ratio * schedule.config.num_train_timesteps
    assert len(run) == 6 and out.shape == (1, 16, 3, 4, 4)
    assert calls["transformer"] == [t for t in run if t >= boundary for _ in range(2)]
    assert calls["transformer_2"] == [t for t in run if t < boundary for _ in range(2)]
    assert calls["transformer"] and calls["transformer_2"]


@pytest.mark.parametrize("chunk", [1, 3, 4, 16])
def test_wan_encode_stream_equals_the_vae_on_the_whole_clip(chunk):
    """Chunks of any size (across the encoder's groups of four frames) give the VAE's own encoding."""
    from diffusers.pipelines.wan.pipeline_wan_video2video import retrieve_latents

    vae = get_adapter("wan").tiny(0).vae
    video = torch.rand(1, 3, 13, 32, 32) * 2 - 1
    whole = retrieve_latents(vae.encode(video), sample_mode="argmax")
    streamed = encode_stream(vae, (video[:, :, i:i + chunk] for i in range(0, 13, chunk)))
    assert streamed.shape == whole.shape == (1, 16, 4, 4, 4)
    assert (streamed - whole).abs().max().item() <= 1e-6


def test_render_a_long_input_through_context_windows(tmp_path):
    """17 input frames for a 9-frame model: two context windows, the stages timed, no checkpoint left."""
    clip = _clip(tmp_path / "in.mp4")
    cfg = load_config(TINY, [f"input_video={clip}", "strength=0.5", "frames=17", "steps=4", "memory.budget=null"])
    result = runner.render(cfg, tmp_path / "out.mp4", show_progress=False)
    side = result.sidecar
    assert side["input_video"] == {"path": str(clip), "frames_read": 17, "source_frames": 17,
                                   "source_size": [40, 48], "strength": 0.5, "denoise_steps": 2}
    assert side["long"]["windows"] == 2 and not side["long"]["noise_rescheduled"]
    assert [s["name"] for s in side["stages"]] == ["text_encode", "video_encode", "denoise", "vae_decode"]
    assert read_video(tmp_path / "out.mp4").shape == (17, 32, 32, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4", "out.json", "out.mp4"]


def test_strength_sets_how_much_of_the_input_survives(tmp_path):
    clip = _clip(tmp_path / "in.mp4", frames=9)
    source = read_video(clip).astype(float)
    source = np.stack([np.asarray(Image.fromarray(f.astype(np.uint8)).resize((32, 32))) for f in source])
    distance = {}
    # 20 steps: at strength 0.3 that is 6 denoising steps from sigma ~0.55; with 7 steps (2 Euler steps from there)
    # the sample model v5 overshot into a greenish tint and ended further from the input than its full render
    # (62.7 vs 56.1 mean abs difference; at 20 steps 46.0 vs 57.5, the VAE's own round trip of this clip 45.7)
    for strength in (0.3, 1.0):
        cfg = load_config(TINY, [f"input_video={clip}", f"strength={strength}", "steps=20", "memory.budget=null"])
        runner.render(cfg, tmp_path / f"{strength}.mp4", show_progress=False)
        distance[strength] = np.abs(read_video(tmp_path / f"{strength}.mp4").astype(float) - source).mean()
    assert distance[0.3] < distance[1.0]


def _fail(run_cli, tmp_path, *sets):
    args = ["render", TINY, "-o", tmp_path / "out" / "x.mp4"]
    for s in sets:
        args += ["--set", s]
    return run_cli(*args)


def test_bad_inputs_are_one_line_before_loading(run_cli, tmp_path, monkeypatch):
    from test_bad_input import clean_failure, no_model_loads

    no_model_loads(monkeypatch)
    out = tmp_path / "out"
    clean_failure(_fail(run_cli, tmp_path, f"input_video={tmp_path / 'nope.mp4'}"), "input_video: no such file",
                  out_dir=out)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all" * 100)
    clean_failure(_fail(run_cli, tmp_path, f"input_video={broken}"), "input_video: cannot decode", out_dir=out)
    clip = _clip(tmp_path / "in.mp4")
    clean_failure(_fail(run_cli, tmp_path, f"input_video={clip}", "frames=33"),
                  "frames: 33 asked, but input_video", "has 17 frames", "ask at most 17", out_dir=out)
    clean_failure(_fail(run_cli, tmp_path, f"input_video={clip}", "strength=0"), "strength", out_dir=out)
    clean_failure(_fail(run_cli, tmp_path, f"input_video={clip}", "image=samples/cond.png"),
                  "input_video: a video-to-video render takes no image", out_dir=out)
    clean_failure(_fail(run_cli, tmp_path, f"input_video={clip}", "long.noise_reschedule=true"),
                  "long.noise_reschedule: a video-to-video render's noise is its input clip's", out_dir=out)
    result = run_cli("render", REPO / "samples/i2vgen-xl-random.yaml", "-o", out / "x.mp4", "--set",
                     f"input_video={clip}")
    clean_failure(result, "input_video: the i2vgen-xl family has no video-to-video pipeline", out_dir=out)
    clean_failure(run_cli("render", TINY, "-o", out / "x.mp4", "--set", f"input_video={clip}", "--resume"),
                  "--resume: no checkpoint at", out_dir=out)


def test_a_strength_that_leaves_no_step_is_refused(tmp_path):
    clip = _clip(tmp_path / "in.mp4", frames=9)
    with pytest.raises(VidrtError, match=r"strength: 0.1 x 5 steps leaves no step to run"):
        load_config(TINY, [f"input_video={clip}", "strength=0.1", "steps=5"])
    assert load_config(TINY, [f"input_video={clip}", "strength=0.2", "steps=5"]).strength == 0.2


def test_dry_run_encodes_the_input_clip_like_the_render(tmp_path):
    """The simulator adds the video_encode stage, takes the length from the clip, and its peak tracks the real
    render's (the same tracker, on fake tensors)."""
    from vidrt.memory.simulate import simulate

    clip = _clip(tmp_path / "in.mp4")
    cfg = load_config(TINY, [f"input_video={clip}", "frames=null", "steps=2", "memory.budget=null",
                             "devices=[cpu]"])
    sim = simulate(cfg, track_modules=False)
    assert sim.frames == 17 and [s["name"] for s in sim.stages][:2] == ["text_encode", "video_encode"]
    real = runner.render(cfg, tmp_path / "out.mp4", show_progress=False).sidecar["stages"]
    measured = {s["name"]: s["activation_bytes"] for s in real}
    simulated = {s["name"]: s["activation_bytes"] for s in sim.stages}
    assert abs(simulated["video_encode"] - measured["video_encode"]) <= 0.05 * measured["video_encode"], \
        (simulated, measured)                                  # measured equal


def test_checks_before_loading_size_the_render_by_the_clip(tmp_path):
    """Without `frames`, the pre-load work estimate counts the clip's frames (17: two windows), not the model's
    native length (9: one window)."""
    from vidrt.config import check_request

    clip = _clip(tmp_path / "in.mp4")
    cfg = load_config(TINY, [f"input_video={clip}", "frames=null", "steps=600", "strength=1.0"])
    warnings = check_request(cfg)
    assert any(w.startswith("17 frames: 2 context windows x 600 steps") for w in warnings), warnings



def test_dry_run_prices_the_steps_the_strength_leaves(tmp_path):
    """A video-to-video render runs int(steps x strength) of its steps: the dry run prices that many denoise
    steps (the text-to-video render of the same length all of them), each step the same work."""
    from vidrt.memory.simulate import simulate

    clip = _clip(tmp_path / "in.mp4")
    common = ["frames=17", "steps=40", "memory.budget=null", "devices=[cpu]"]
    v2v = simulate(load_config(TINY, [f"input_video={clip}", "strength=0.5", *common]), track_modules=False)
    t2v = simulate(load_config(TINY, common), track_modules=False)
    step = t2v.predicted_seconds["denoise_step"]
    assert v2v.predicted_seconds["denoise_step"] == pytest.approx(step, rel=0.02)
    assert t2v.predicted_seconds["denoise"] == pytest.approx(40 * step, rel=0.02)
    assert v2v.predicted_seconds["denoise"] == pytest.approx(20 * step, rel=0.02)
