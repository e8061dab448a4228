"""The full-size simulator: real classes under FakeTensorMode, checked against the real tracker on tiny
models and against known parameter counts of the shipped configs."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from vidrt.core.errors import VidrtError
from vidrt.memory.simulate import MemorySettings, simulate
from vidrt.models.known import KNOWN_MODELS, build_module, components_from_folder, known_dir

REPO = Path(__file__).resolve().parents[1]


def _config(family, path, frames, height, width, guidance=5.0, image=None, dtype="float32"):
    from vidrt.config import parse_config

    return parse_config({"model": {"family": family, "path": path, "dtype": dtype}, "prompt": "p", "frames": frames,
                         "height": height, "width": width, "guidance": guidance, "image": image, "devices": ["cpu"]})


@pytest.mark.parametrize("family,variant", [("wan", "2.1"), ("animatediff", None), ("wan", "2.2-a14b"),
                                            ("wan", "2.2-ti2v")])
def test_simulated_peak_matches_real_tracker_on_tiny_models(family, variant):
    from rich.console import Console

    from vidrt.memory.tracker import MemoryTracker
    from vidrt.models import get_adapter
    from vidrt.models.base import RenderRequest
    from vidrt.run.memory_setup import apply_settings
    from vidrt.run.stages import run_stages

    from vidrt.core.tensors import module_bytes

    adapter = get_adapter(family)
    pipe = adapter.tiny(0, **({"variant": variant} if variant else {}))
    frames = 5 if family == "wan" else 4
    req = RenderRequest(prompt="a red circle moves left", negative_prompt="", frames=frames, height=64, width=64,
                        steps=1, guidance=5.0, seed=0)
    # what a render applies before running (VAE slicing / frame buffer with tiling off)
    apply_settings(pipe, MemorySettings(), torch.device("cpu"), 64, 64)
    mem = MemoryTracker("cpu")
    with mem:
        run_stages(pipe, adapter, req, torch.device("cpu"), mem, Console(file=io.StringIO()), show_progress=False)
    rep = simulate(_config(family, "tiny", frames, 64, 64), MemorySettings(), pipe=pipe)
    assert rep.simulated and rep.device == "cpu"
    assert [s["name"] for s in rep.stages] == [s["name"] for s in mem.stages]
    if family == "wan":     # every model's weights (Wan 2.2 A14B: both experts)
        models = {k: v for k, v in pipe.components.items() if isinstance(v, torch.nn.Module)}
        assert rep.params == {k: module_bytes([v]) for k, v in models.items()}
    assert abs(rep.peak_bytes - mem.peak_bytes) <= 0.05 * mem.peak_bytes, (rep.peak_bytes, mem.peak_bytes)
    for real in mem.stages:
        sim = rep.stage(real["name"])
        if real["activation_bytes"] > 1_000_000:
            assert abs(sim["activation_bytes"] - real["activation_bytes"]) <= 0.05 * real["activation_bytes"]
        assert sim["peak_bytes"] >= sim["param_bytes"] + sim["activation_bytes"]
    d = rep.to_dict()
    assert d["simulated"] is True and {"peak_bytes", "host_peak_bytes", "stages", "modules"} <= set(d)


def test_known_configs_ship_for_every_model():
    for model in KNOWN_MODELS:
        folder = known_dir(model)
        assert folder is not None and folder.is_dir(), model
        assert (folder / "config.json").is_file() or (folder / "model_index.json").is_file()


@pytest.mark.parametrize("model,component,params", [
    ("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "transformer", 1.419e9),
    ("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "vae", 0.127e9),
    ("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "text_encoder", 5.68e9),
    ("stable-diffusion-v1-5/stable-diffusion-v1-5", "unet", 0.860e9),
    ("ali-vilab/i2vgen-xl", "unet", 1.42e9),
])
def test_full_size_parameter_counts(model, component, params):
    from torch._subclasses.fake_tensor import FakeTensorMode

    comps = components_from_folder(known_dir(model))
    with FakeTensorMode():
        mod = build_module(comps[component])
        n = sum(p.numel() for p in mod.parameters())
    assert abs(n - params) <= 0.01 * params, n


def test_unknown_model_id_is_one_clear_error():
    with pytest.raises(VidrtError, match="model.path"):
        simulate(_config("wan", "nobody/no-such-model", 81, 480, 832))


def test_parameter_placement_follows_offload_and_text_encoder_settings():
    from vidrt.models import get_adapter

    pipe = get_adapter("wan").tiny(0)
    cfg = _config("wan", "tiny", 5, 32, 32)
    cfg = cfg.model_copy(update={"devices": ["cuda"]})  # dry runs budget for the accelerator, also without one
    base = simulate(cfg, MemorySettings(), pipe=pipe, track_modules=False)
    te_cpu = simulate(cfg, MemorySettings(text_encoder="cpu"), pipe=pipe, track_modules=False)
    model = simulate(cfg, MemorySettings(offload="model"), pipe=pipe, track_modules=False)
    group = simulate(cfg, MemorySettings(offload="group"), pipe=pipe, track_modules=False)
    p = base.params
    total = sum(p.values())
    # no offload: everything resident while encoding, then the text encoder is released to the host
    assert base.stage("text_encode")["param_bytes"] == total
    assert base.stage("denoise")["param_bytes"] == total - p["text_encoder"]
    assert base.host_peak_bytes == p["text_encoder"]
    # text encoder on the CPU: its stage costs the accelerator only the other resident models
    te = te_cpu.stage("text_encode")
    assert te["device"] == "cpu" and te["peak_bytes"] == total - p["text_encoder"]
    assert te_cpu.host_peak_bytes >= p["text_encoder"] + te["activation_bytes"]
    # model offload: one model at a time
    assert model.stage("denoise")["param_bytes"] == p["transformer"]
    assert model.stage("vae_decode")["param_bytes"] == p["vae"]
    # group offload: the denoiser streams (the tiny one has 2 blocks, each over 1/8 of its weights: layer by
    # layer), the VAE stays
    from vidrt.memory.simulate.placement import leaf_resident
    from vidrt.engine.offload import offload_granularity

    assert offload_granularity(pipe.transformer) == "leaf_level"
    assert group.stage("denoise")["param_bytes"] == leaf_resident(pipe.transformer) + p["vae"]
    assert group.stage("text_encode")["param_bytes"] < p["text_encoder"] + p["vae"]
    assert group.host_peak_bytes == total - p["vae"]
    assert max(group.peak_bytes, model.peak_bytes) <= base.peak_bytes


@pytest.mark.slow
def test_wan_13b_480p_transformer_activations_match_the_measured_figure():
    """METHODS.md §9: one Wan 1.3B forward at 81x480x832 bf16 (SDPA, no CFG) peaks at 1.50 GiB of activations."""
    cfg = _config("wan", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", 81, 480, 832, guidance=1.0, dtype="bfloat16")
    cfg = cfg.model_copy(update={"devices": ["auto"]})
    rep = simulate(cfg, MemorySettings())
    act = rep.stage("denoise")["activation_bytes"]
    assert abs(act - 1.50 * 2**30) <= 0.10 * 1.50 * 2**30, act / 2**30
    assert abs(rep.params["transformer"] / 2 - 1.419e9) < 0.01e9
    assert rep.device == "cuda"


def test_offload_granularity_of_the_full_size_denoisers():
    """DiTs stream block by block; UNets (one SD1.5 up block is a quarter of the weights) layer by layer."""
    import json

    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel, WanTransformer3DModel

    from vidrt.engine.offload import offload_granularity

    known = Path(__file__).resolve().parents[1] / "vidrt" / "models" / "known_configs"

    def cfg(*parts):
        return {k: v for k, v in json.loads(known.joinpath(*parts, "config.json").read_text()).items()
                if not k.startswith("_")}

    with torch.device("meta"):
        wan = WanTransformer3DModel.from_config(cfg("Wan-AI--Wan2.1-T2V-1.3B-Diffusers", "transformer"))
        unet = UNetMotionModel.from_unet2d(
            UNet2DConditionModel.from_config(cfg("stable-diffusion-v1-5--stable-diffusion-v1-5", "unet")),
            MotionAdapter.from_config(cfg("guoyww--animatediff-motion-adapter-v1-5-2")))
    assert offload_granularity(wan) == "block_level"
    assert offload_granularity(unet) == "leaf_level"


def test_per_rank_prediction_for_several_gpus():
    """`ranks` runs the denoiser through the real distributed hooks on fake tensors: AnimateDiff split by
    frames (or CFG batch) over 2 ranks holds about half the activations; 4 ranks (CFG 2 x frames 2) a quarter.
    The same figures as the 2-process gloo measurement (bench/results/distributed.md: CFG 0.50x)."""
    from vidrt.config import load_config

    cfg = load_config(REPO / "samples/animatediff-random.yaml", ["frames=16", "height=64", "width=64"])
    act = {}
    for ranks, mode in ((1, None), (2, "sequence"), (2, "cfg"), (4, None)):
        rep = simulate(cfg, ranks=ranks, mode=mode, track_modules=False)
        act[(ranks, mode)] = rep.stage("denoise")["activation_bytes"]
        assert (rep.distributed is None) == (ranks == 1)
    single = act[(1, None)]
    assert 0.4 * single <= act[(2, "sequence")] <= 0.6 * single, act
    assert 0.4 * single <= act[(2, "cfg")] <= 0.6 * single, act
    assert act[(4, None)] <= 0.35 * single, act
    assert rep.distributed["frame_parallel"] == 2 and rep.distributed["cfg_parallel"] == 2


def test_profile_gpus_needs_dry_run(run_cli):
    result = run_cli("profile", "samples/wan-random.yaml", "--gpus", "2")
    assert result.exit_code != 0 and "--gpus: only with --dry-run" in result.output


def test_long_video_dry_run_predicts_one_window():
    """Beyond the native length a render runs context windows with the loop on the host: the dry run's
    denoise peak is one window's (flat in the length) while its predicted step time grows with the windows."""
    from vidrt.config import load_config

    reports = {f: simulate(load_config(REPO / "samples/wan-random.yaml", [f"frames={f}"]), gpu="h100",
                           track_modules=False) for f in (81, 321)}
    peaks = {f: r.stage("denoise")["peak_bytes"] for f, r in reports.items()}
    assert peaks[321] <= 1.2 * peaks[81], peaks
    steps = {f: r.predicted_seconds["denoise_step"] for f, r in reports.items()}
    assert steps[321] > 2 * steps[81], steps     # 5 windows of 81 frames vs 1
    # the loop kept on the accelerator (long.loop_on_host: false) holds full-length tensors: the peak grows
    on_device = simulate(load_config(REPO / "samples/wan-random.yaml", ["frames=321", "long.loop_on_host=false"]),
                         gpu="h100", track_modules=False)
    assert on_device.stage("denoise")["peak_bytes"] > peaks[321]


def test_dry_run_predicts_seconds_per_stage_on_a_gpu_model():
    from vidrt.config import load_config

    cfg = load_config(REPO / "samples/wan-1.3b-480p.yaml", ["frames=17", "height=256", "width=256", "steps=4"])
    fast, slow = (simulate(cfg, gpu=g, track_modules=False) for g in ("h100", "rtx3060"))
    assert fast.device_model == "h100" and slow.device_model == "rtx3060"
    for r in (fast, slow):
        stage_sum = sum(s["predicted_seconds"] for s in r.stages)
        assert abs(stage_sum - r.predicted_seconds["total"]) <= 1e-2 * max(1.0, r.predicted_seconds["total"])
        assert r.predicted_seconds["denoise"] == pytest.approx(r.predicted_seconds["denoise_step"] * cfg.steps,
                                                               rel=1e-2)
    assert slow.predicted_seconds["total"] > fast.predicted_seconds["total"]
    with pytest.raises(VidrtError, match="--gpu: unknown GPU"):
        simulate(cfg, gpu="voodoo2", track_modules=False)
