"""Wan 2.2 on its tiny twins (the real diffusers classes): A14B's two experts (transformer for the high-noise steps,
transformer_2 below the boundary) and TI2V-5B's per-token timesteps with the 16x patchifying VAE. Each is sliced,
windowed, accelerated and simulated as Wan 2.1 is, and stays exact where Wan 2.1 is exact."""
from __future__ import annotations

import math

import pytest
import torch

import vidrt
from vidrt.engine.long import LongVideoConfig, disable_long_video, enable_long_video
from vidrt.engine.policies import TaylorGate, disable_policy, enable_policy, policy_stats
from vidrt.engine.slicing import SlicingConfig, disable_slicing, enable_slicing, slicing_state
from vidrt.models import denoisers_of, get_adapter

PROMPT = "a red circle moves right on a blue background"


def latents(pipe, steps: int = 4, size: int = 32, frames: int = 9):
    out = pipe(prompt=PROMPT, negative_prompt="", num_frames=frames, height=size, width=size,
               num_inference_steps=steps, guidance_scale=5.0, generator=torch.Generator().manual_seed(0),
               output_type="latent")
    return out.frames


@pytest.fixture(scope="module")
def a14b():
    return get_adapter("wan").tiny(0, variant="2.2-a14b")


@pytest.fixture(scope="module")
def ti2v():
    return get_adapter("wan").tiny(0, variant="2.2-ti2v")


@pytest.mark.parametrize("variant,size", [("2.2-a14b", 32), ("2.2-ti2v", 64)])
def test_sliced_run_equals_unsliced(variant, size):
    """Token slicing on every expert; TI2V's per-token modulation is cut with its tokens."""
    pipe = get_adapter("wan").tiny(0, variant=variant)
    ref = latents(pipe, size=size)
    enable_slicing(pipe, SlicingConfig(chunk_tokens=3, chunk_frames=1))
    try:
        assert all(slicing_state(d) is not None for d in denoisers_of(pipe))
        sliced = latents(pipe, size=size)
    finally:
        disable_slicing(pipe)
    assert torch.allclose(sliced, ref, atol=1e-4, rtol=1e-4), (sliced - ref).abs().max()   # 4 steps of fp32 sums


def test_each_expert_keeps_its_own_policy_state(a14b):
    """A controller per expert: the second gets a fresh copy of the policy, each runs its own steps (the first
    those at or above the boundary timestep), and the stats add up over both."""
    steps = 8
    ref = latents(a14b, steps=steps)
    policy = TaylorGate(threshold=math.inf, warmup=1, min_gap=1)
    enable_policy(a14b, policy)
    try:
        got = latents(a14b, steps=steps)
        ctls = [vidrt.engine.policies._controllers(a14b)[i] for i in range(2)]
        assert ctls[0].policies[0] is policy and ctls[1].policies[0] is not policy
        first, second = (set(c.gen.steps) for c in ctls)
        boundary = a14b.config.boundary_ratio * a14b.scheduler.config.num_train_timesteps
        high = {i for i, t in enumerate(a14b.scheduler.timesteps) if t >= boundary}
        assert first == high and second == set(range(steps)) - high and first and second
        stats = policy_stats(a14b)
    finally:
        disable_policy(a14b)
    assert stats["steps_total"] == steps and len(stats["per_denoiser"]) == 2
    assert stats["steps_skipped"] > 0 and not torch.equal(got, ref)     # it skipped, so the result moved
    assert latents(a14b, steps=steps).equal(ref)                        # and detaching restores the model


def test_per_token_timesteps_are_cut_with_their_window(ti2v):
    den = ti2v.transformer
    g = torch.Generator().manual_seed(0)
    frames, h, w = 9, 4, 4
    per_frame = (h // 2) * (w // 2)
    x = torch.randn(1, 48, frames, h, w, generator=g)
    t = torch.linspace(999, 1, frames * per_frame).view(1, -1)      # a timestep per token, frame-major
    ctx = torch.randn(1, 16, 32, generator=g)

    def run(xs, ts):
        with torch.no_grad():
            return den(hidden_states=xs, timestep=ts, encoder_hidden_states=ctx, return_dict=False)[0]

    enable_long_video(den, LongVideoConfig(window=3, overlap=1))
    try:
        windowed = run(x, t)
        first = run(x[:, :, :3], t[:, :3 * per_frame])       # fits the window: a plain call
        last = run(x[:, :, 6:], t[:, 6 * per_frame:])
    finally:
        disable_long_video(den)
    assert torch.allclose(windowed[:, :, :2], first[:, :, :2], atol=1e-6)
    assert torch.allclose(windowed[:, :, 7:], last[:, :, 1:], atol=1e-6)


def test_long_video_with_a_policy_renders_both_variants(tmp_path):
    from vidrt.config import parse_config
    from vidrt.run.render import render

    for variant in ("2.2-a14b", "2.2-ti2v"):
        pipe = get_adapter("wan").tiny(0, variant=variant)
        cfg = parse_config({"model": {"family": "wan", "path": "tiny"}, "prompt": PROMPT, "frames": 17,
                            "height": 32, "width": 32, "steps": 4, "devices": ["cpu"],
                            "long": {"window": 9, "overlap": 4}, "acceleration": {"policy": "taylor_gate"}})
        result = render(cfg, tmp_path / f"{variant}.mp4", pipe=pipe, show_progress=False)
        assert result.sidecar["long"]["windows"] >= 2
        assert result.sidecar["policy"]["steps_total"] == 4


def test_simulated_experts_take_turns_under_model_offload(tmp_path):
    """Both experts' weights count where both stay (offload none); under model offload only the running one is
    on the accelerator; fp8 storage stores both."""
    from vidrt.config import parse_config
    from vidrt.core.tensors import module_bytes
    from vidrt.memory.settings import MemorySettings
    from vidrt.memory.simulate import simulate

    pipe = get_adapter("wan").tiny(0, variant="2.2-a14b")
    pipe.save_pretrained(tmp_path / "a14b", safe_serialization=True)
    cfg = parse_config({"model": {"family": "wan", "path": str(tmp_path / "a14b")}, "prompt": PROMPT, "frames": 9,
                        "height": 32, "width": 32, "devices": ["cpu"]})
    expert = module_bytes([pipe.transformer])
    assert module_bytes([pipe.transformer_2]) == expert
    everything = simulate(cfg, MemorySettings(offload="none"))
    none = everything.stage("denoise")
    model = simulate(cfg, MemorySettings(offload="model")).stage("denoise")
    assert none["param_bytes"] == sum(everything.params.values()) and everything.params["transformer_2"] == expert
    assert model["param_bytes"] == expert                  # the running expert only
    assert model["stage_param_bytes"] == none["stage_param_bytes"] == 2 * expert
    fp8 = simulate(cfg, MemorySettings(offload="none", weights="fp8"))
    assert fp8.params["transformer"] == fp8.params["transformer_2"] < expert


@pytest.mark.parametrize("model,params", [("Wan-AI/Wan2.2-TI2V-5B-Diffusers", 5.0e9),
                                          ("Wan-AI/Wan2.2-T2V-A14B-Diffusers", 2 * 14.3e9)])
def test_bundled_configs_dry_run_offline(model, params):
    from vidrt.config import parse_config
    from vidrt.memory.settings import MemorySettings
    from vidrt.memory.simulate import simulate

    cfg = parse_config({"model": {"family": "wan", "path": model, "dtype": "bfloat16"}, "prompt": PROMPT,
                        "frames": 81, "height": 480, "width": 832})
    rep = simulate(cfg, MemorySettings(slicing=True))
    denoisers = sum(v for k, v in rep.params.items() if k.startswith("transformer"))
    assert abs(denoisers / 2 - params) <= 0.05 * params, denoisers


def test_sizes_off_the_token_grid_are_refused(run_cli, tmp_path):
    """Wan 2.2 TI2V's token is 32 pixels (16x VAE, 2x2 patches): a render and a dry run of another size stop in
    one line before anything loads or is built (was: a shape error deep in the transformer)."""
    from test_bad_input import clean_failure

    out_dir = tmp_path / "out"
    clean_failure(run_cli("render", "samples/wan22-ti2v-random.yaml", "-o", out_dir / "x.mp4", "--set", "height=48",
                          "--quiet"), "height: 48 is not a multiple of 32", out_dir=out_dir)
    clean_failure(run_cli("profile", "samples/wan2.2-ti2v-5b.yaml", "--dry-run", "--set", "width=720"),
                  "width: 720 is not a multiple of 32")


def test_model_index_is_parsed_once_until_it_changes(repo, tmp_path, monkeypatch):
    """The checks (family, a second expert) and the simulator read a folder's model_index.json for one render:
    one parse serves them, a copy goes out (a caller's change does not stick), a rewritten index is parsed again,
    and a broken one is one line naming the file."""
    import json
    import shutil
    from types import SimpleNamespace

    import vidrt.models.known as known
    import vidrt.models.loading as loading
    from vidrt.config.checks import has_two_experts
    from vidrt.core.errors import VidrtError
    from vidrt.models import get_spec

    calls = []
    counting = SimpleNamespace(loads=lambda text: calls.append(text) or json.loads(text),
                               JSONDecodeError=json.JSONDecodeError)
    monkeypatch.setattr(loading, "json", counting)
    monkeypatch.setattr(known, "json", counting)        # (the simulator's reader of component configs)
    shutil.copy(repo / "samples/tiny-random-wan22-a14b/model_index.json", tmp_path / "model_index.json")
    wan = get_spec("wan")
    assert has_two_experts(tmp_path, wan) and loading.read_index(tmp_path)["_class_name"] == "WanPipeline"
    known.components_from_folder(tmp_path)        # the simulator's read
    assert len(calls) == 1
    loading.read_index(tmp_path)["transformer_2"] = [None, None]
    assert has_two_experts(tmp_path, wan) and len(calls) == 1
    index = json.loads((tmp_path / "model_index.json").read_text())
    del index["transformer_2"]
    (tmp_path / "model_index.json").write_text(json.dumps(index, indent=1))
    assert not has_two_experts(tmp_path, wan) and len(calls) == 2
    (tmp_path / "model_index.json").write_text("{not json")
    with pytest.raises(VidrtError, match="model_index.json is not valid JSON"):
        has_two_experts(tmp_path, wan)
