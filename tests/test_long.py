"""Context windows for long videos: weights cover every frame and sum to 1, a windowed denoiser equals the
plain one when the input fits one window, the activation peak stays flat in total frames, and the CLI renders
beyond the native length."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vidrt.engine.long import (LongVideoConfig, disable_long_video, enable_long_video, reschedule_noise, window_state,
                              window_starts, window_weights)
from vidrt.engine.policies import StepRehash, TaylorGate, disable_policy, enable_policy, policy_stats
from vidrt.models import get_adapter


@pytest.mark.parametrize("total, window, overlap", [(5, 5, 1), (9, 5, 1), (17, 5, 2), (40, 5, 1), (33, 8, 3),
                                                    (12, 4, 0), (101, 21, 5)])
def test_windows_cover_every_frame_with_weights_summing_to_one(total, window, overlap):
    starts = window_starts(total, window, overlap)
    weights = window_weights(total, window, starts)
    assert starts[0] == 0 and starts[-1] + window >= total
    assert all(b - a <= window - overlap for a, b in zip(starts, starts[1:]))
    assert torch.allclose(weights.sum(0), torch.ones(total), atol=1e-6)
    assert (weights >= 0).all()
    for i, start in enumerate(starts):  # a window never weighs frames outside itself
        outside = torch.ones(total, dtype=torch.bool)
        outside[start:start + window] = False
        assert (weights[i][outside] == 0).all()
    if overlap:      # Wan: every window after the first leaves its first latent frame to the window before
        kept = window_weights(total, window, starts, start_latents=1)
        assert torch.allclose(kept.sum(0), torch.ones(total), atol=1e-6)
        assert all(kept[i, start] == 0 for i, start in enumerate(starts) if i > 0)
        assert torch.equal(kept[0], weights[0]) if len(starts) == 1 else kept[0, 0] == 1


def test_bad_overlap_is_refused():
    with pytest.raises(ValueError, match=r"overlap 5 must be in \[0, window=5\)"):
        window_starts(20, 5, 5)


def wan_inputs(frames: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(1, 16, frames, 4, 4, generator=g), timestep=torch.tensor([500]),
                encoder_hidden_states=torch.randn(1, 16, 32, generator=g), return_dict=False)


def test_wan_windows_identity_when_input_fits_and_blend_otherwise():
    pipe = get_adapter("wan").tiny(0)
    den = pipe.transformer
    short, long_ = wan_inputs(3), wan_inputs(9)
    with torch.no_grad():
        ref_short = den(**short)[0]
        ref_long = den(**long_)[0]
        enable_long_video(den, LongVideoConfig(window=3, overlap=1))
        assert torch.equal(den(**short)[0], ref_short)
        windowed = den(**long_)[0]
        assert window_state(den).calls == 4   # windows at 0, 2, 4, 6 (was: counted by the engine's own window_starts)
        # first window frames that no other window touches equal a plain run on that window alone
        alone = den(**{**long_, "hidden_states": long_["hidden_states"][:, :, :3]})[0]
        assert torch.allclose(windowed[:, :, :2], alone[:, :, :2], atol=1e-6)
        assert windowed.shape == ref_long.shape and not torch.allclose(windowed, ref_long)
        disable_long_video(den)
        assert window_state(den) is None
        assert torch.equal(den(**long_)[0], ref_long)


def test_animatediff_rows_layout_slices_text_per_frame():
    pipe = get_adapter("animatediff").tiny(0)
    den = pipe.unet
    g = torch.Generator().manual_seed(0)
    frames = 6
    sample = torch.randn(2, 4, frames, 8, 8, generator=g)
    text = torch.randn(2, 16, 32, generator=g).repeat_interleave(frames, dim=0)
    with torch.no_grad():
        enable_long_video(den, LongVideoConfig(window=4, overlap=2))
        out = den(sample, torch.tensor(10), encoder_hidden_states=text).sample
        disable_long_video(den)
        alone = den(sample[:, :, :4], torch.tensor(10), encoder_hidden_states=text.reshape(2, frames, 16, 32)[:, :4]
                    .reshape(8, 16, 32)).sample
    assert out.shape == sample.shape
    assert torch.allclose(out[:, :, :2], alone[:, :, :2], atol=1e-5)


def test_noise_rescheduling_reuses_window_noise():
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 4, 20, 2, 2)
    out = reschedule_noise(noise, window=8, overlap=4, generator=g)
    assert torch.equal(out[:, :, :8], noise[:, :, :8])
    for f in range(8, 20):  # every later frame is a copy of an earlier frame
        assert any(torch.equal(out[:, :, f], out[:, :, k]) for k in range(f))


def test_noise_reschedule_key_turns_noise_reuse_on_for_wan(tmp_path, repo):
    """`long.noise_reschedule`: Wan's default is off (the render's noise as the pipeline draws it); true reuses the
    first window's noise frames in the later windows, as AnimateDiff does by default. The noise the denoiser is
    first called with shows it; the sidecar says which ran."""
    from vidrt.run import render as runner
    from vidrt.config import load_config

    first_inputs, sidecars = {}, {}
    for setting in (None, True):
        extra = [] if setting is None else ["long.noise_reschedule=true"]
        cfg = load_config(repo / "samples" / "wan-random.yaml",
                          ["frames=33", "steps=1", "long.window=9", "long.overlap=4", *extra])
        pipe = runner.load_pipeline(cfg, torch.device("cpu"), with_image=False)
        seen = []
        handle = pipe.transformer.register_forward_pre_hook(
            lambda module, args, kwargs: seen.append(kwargs["hidden_states"].clone()), with_kwargs=True)
        result = runner.render(cfg, tmp_path / f"n-{setting}.mp4", pipe=pipe, show_progress=False)
        handle.remove()
        first_inputs[setting], sidecars[setting] = seen[0], result.sidecar["long"]
    default, reused = first_inputs[None], first_inputs[True]
    assert not sidecars[None]["noise_rescheduled"] and sidecars[True]["noise_rescheduled"]
    window = sidecars[True]["window_latent_frames"]
    assert default.shape == reused.shape and default.shape[2] == 9 and window == 3
    assert torch.equal(default[:, :, :window], reused[:, :, :window])     # the first window's noise is kept
    for f in range(window, reused.shape[2]):       # every later frame is one of the frames before it
        assert any(torch.equal(reused[:, :, f], reused[:, :, k]) for k in range(f))
        assert not any(torch.equal(default[:, :, f], default[:, :, k]) for k in range(f))


def test_denoiser_activation_peak_flat_in_frames():
    """Windowed activation peak at 4x and 8x the window length stays within 1.2x of the 1x peak.

    The transformer is wider than the other tiny twins so that, as in real models, per-token activations
    dominate the latent-sized output buffer (which necessarily grows with the frame count)."""
    from diffusers import WanTransformer3DModel

    from vidrt.memory.tracker import MemoryTracker

    torch.manual_seed(0)
    den = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=64,
                                in_channels=16, out_channels=16, text_dim=32, freq_dim=256, ffn_dim=2048,
                                num_layers=1, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                rope_max_seq_len=64).eval()
    enable_long_video(den, LongVideoConfig(window=3, overlap=1))
    peaks = {}
    for mult in (1, 4, 8):
        inputs = wan_inputs(3 * mult)
        with torch.no_grad(), MemoryTracker("cpu") as mem:
            with mem.stage("denoise", params=[den]):
                den(**inputs)
        peaks[mult] = mem.stages[0]["activation_bytes"]
    disable_long_video(den)
    plain = {}
    for mult in (1, 8):
        with torch.no_grad(), MemoryTracker("cpu") as mem:
            with mem.stage("denoise", params=[den]):
                den(**wan_inputs(3 * mult))
        plain[mult] = mem.stages[0]["activation_bytes"]
    assert peaks[4] <= 1.2 * peaks[1] and peaks[8] <= 1.2 * peaks[1], peaks
    assert plain[8] > 2 * plain[1]  # without windows it grows: the test can tell the difference


def test_cli_renders_beyond_native_length(run_cli, tmp_path):
    import json

    from vidrt.run.video import read_video

    out = tmp_path / "long.mp4"
    result = run_cli("render", "samples/wan-random.yaml", "-o", out, "--set", "frames=33", "--set", "steps=2",
                     "--set", "long.window=9", "--set", "long.overlap=4", "--quiet")
    assert result.exit_code == 0, result.output
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["long"]["windows"] >= 3 and side["long"]["window_latent_frames"] == 3
    assert read_video(out).shape == (33, 32, 32, 3)



@pytest.mark.parametrize("make", [lambda: TaylorGate(threshold=math.inf, warmup=2),
                                  lambda: StepRehash(threshold=math.inf, warmup=1)], ids=["taylor_gate", "rehash"])
def test_block_policies_keep_state_per_window_and_cfg_stream(make):
    """Under context windows each window is a call of its own to the policy: its output equals each window run
    alone through a policy of its own, blended as the windows blend (a policy that saw the whole call once would
    forecast and reuse one window's features for all of them)."""
    den = get_adapter("wan").tiny(0).transformer
    total, window, overlap, steps = 7, 3, 1, 5
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(1, 16, total, 4, 4, generator=g) for _ in range(steps)]
    ctx = {name: torch.randn(1, 16, 32, generator=g) for name in ("cond", "uncond")}
    times = [torch.tensor([900.0 - 150 * i]) for i in range(steps)]

    def call(x, t, name):
        with den.cache_context(name):
            return den(hidden_states=x, timestep=t, encoder_hidden_states=ctx[name], return_dict=False)[0]

    pol = make()
    enable_long_video(den, LongVideoConfig(window=window, overlap=overlap))
    enable_policy(den, pol, num_steps=steps)
    try:
        with torch.no_grad():
            got = [{name: call(x, t, name) for name in ctx} for x, t in zip(xs, times)]
        stats, streams = policy_stats(den), set(pol._streams)
    finally:
        disable_policy(den)
        disable_long_video(den)
    starts = window_starts(total, window, overlap)
    assert streams == {f"{n}{'' if i == 0 else f'#{i}'}" for n in ctx for i in range(len(starts))}
    assert 0 < stats["blocks_evaluated"] < stats["blocks_total"]          # the policy did skip blocks

    weights = window_weights(total, window, starts, get_adapter("wan").window_start_latents)
    want = [{name: torch.zeros(1, 16, total, 4, 4) for name in ctx} for _ in range(steps)]
    for i, start in enumerate(starts):
        enable_policy(den, make(), num_steps=steps)
        try:
            with torch.no_grad():
                for x, t, w in zip(xs, times, want):
                    for name in ctx:
                        piece = call(x[:, :, start:start + window], t, name)
                        w[name][:, :, start:start + window] += piece * weights[i, start:start + window].view(1, 1, -1, 1, 1)
        finally:
            disable_policy(den)
    for g_step, w_step in zip(got, want):
        for name in ctx:
            assert torch.equal(g_step[name], w_step[name]), name


def test_cli_renders_long_video_with_a_step_policy(run_cli, tmp_path, repo):
    import json

    from vidrt.run.video import read_video

    out = tmp_path / "long.mp4"
    result = run_cli("render", "samples/wan-random.yaml", "-o", out, "--set", "frames=33", "--set", "steps=6",
                     "--set", "long.window=9", "--set", "long.overlap=4", "--set", "acceleration.policy=taylor_gate",
                     "--set", "acceleration.threshold=1e9", "--set", "acceleration.warmup=2", "--quiet")
    assert result.exit_code == 0, result.output
    side = json.loads(out.with_suffix(".json").read_text())
    windows = side["long"]["windows"]
    assert windows >= 3
    policy = side["policy"]
    assert policy["steps_total"] == 6 and policy["steps_skipped"] > 0
    layers = json.loads((repo / "samples" / "tiny-random-wan" / "transformer" / "config.json").read_text())["num_layers"]
    assert policy["blocks_total"] == 6 * 2 * windows * layers      # every window and CFG stream is a call
    assert read_video(out).shape == (33, 32, 32, 3)


def test_loop_on_host_gives_the_same_frames_and_restores_the_pipeline(tmp_path, repo):
    """`long.loop_on_host` (auto on accelerators) runs the pipeline's loop on the CPU and only the windows on
    the render device; on the CPU both are the same device, so the frames must be identical, and the pipeline
    must come back with its own class (the loop device is a class swap)."""
    from vidrt.run import render as runner
    from vidrt.config import load_config
    from vidrt.run.video import read_video

    frames = {}
    for on_host in (False, True):
        cfg = load_config(repo / "samples" / "wan-random.yaml",
                          ["frames=33", "steps=2", "long.window=9", "long.overlap=4",
                           f"long.loop_on_host={str(on_host).lower()}"])
        pipe = runner.load_pipeline(cfg, torch.device("cpu"), with_image=False)
        cls = type(pipe)
        adapter = get_adapter(cfg.model.family)
        req = runner.request_from(cfg, adapter, pipe, None)
        applied, undo = runner.apply_long(pipe, adapter, cfg, req, resuming=False, device=torch.device("cpu"))
        assert applied["loop_on_host"] is on_host
        assert (type(pipe) is not cls) is on_host
        assert pipe._execution_device == torch.device("cpu")
        undo()
        assert type(pipe) is cls
        out = tmp_path / f"host-{on_host}.mp4"
        result = runner.render(cfg, out, pipe=pipe, show_progress=False)
        assert result.sidecar["long"]["loop_on_host"] is on_host and type(pipe) is cls
        frames[on_host] = read_video(out)
    assert np.array_equal(frames[True], frames[False])


def test_loop_on_host_keeps_simulated_accelerator_memory_flat(repo):
    """The real WanPipeline loop on a stand-in accelerator (FakeTensorMode, meta device): with the loop on the
    host the accelerator peak at 4x the native length stays within 1.2x of 1x; with the loop on the
    accelerator it grows (the full-length loop tensors), so the test can tell the difference."""
    from vidrt.memory.simulate.long import wan_long_loop_peak

    def peak(frames, host):
        r = wan_long_loop_peak(repo / "samples" / "tiny-wan", frames=frames, height=64, width=64,
                               loop_on_host=host, steps=1)
        assert r["loop_device"] == ("cpu" if host else "meta")
        return r["accelerator_peak_bytes"]

    host_1x, host_4x = peak(9, True), peak(45, True)
    device_1x, device_4x = peak(9, False), peak(45, False)
    assert host_4x <= 1.2 * host_1x, (host_1x, host_4x)
    assert device_4x > 1.4 * device_1x, (device_1x, device_4x)
