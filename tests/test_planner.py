"""The budget planner: size parsing, the fastest plan that fits by predicted seconds, budget auto, the
'cannot fit' error, and plans a config accepts."""
from __future__ import annotations

from pathlib import Path

import pytest

from vidrt.core.errors import VidrtError
from vidrt.core.units import parse_bytes
from vidrt.memory.planner import plan
from vidrt.memory.settings import settings_from_config
from vidrt.memory.simulate import simulate

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("text,value", [("8GiB", 8 * 2**30), ("12GB", 12 * 10**9), ("512MiB", 512 * 2**20),
                                        ("1.5 GiB", int(1.5 * 2**30)), ("100", 100), (4096, 4096)])
def test_parse_bytes(text, value):
    assert parse_bytes(text) == value


@pytest.mark.parametrize("bad", ["lots", "8 parsecs", "0GiB", "-1GiB", "", None, True])
def test_bad_budgets_name_the_value(bad):
    with pytest.raises(VidrtError, match="budget"):
        if bad is None:   # no budget at all: memory.budget null and none given
            cfg = _cfg()
            plan(cfg.model_copy(update={"memory": cfg.memory.model_copy(update={"budget": None})}), None)
        else:
            parse_bytes(bad)


def _cfg():
    from vidrt.config import parse_config

    return parse_config({"model": {"family": "wan", "path": "tiny"}, "prompt": "p", "frames": 5, "height": 64,
                         "width": 64, "guidance": 5.0, "devices": ["cpu"]})


@pytest.fixture(scope="module")
def tiny():
    from vidrt.models import get_adapter

    return get_adapter("wan").tiny(0)


def test_plans_get_cheaper_with_more_budget_and_always_fit(tiny):
    cfg = _cfg()
    roomy = plan(cfg, "1GiB", pipe=tiny)
    fastest = min(c["seconds"]["total"] for c in roomy.candidates)
    assert roomy.predicted_seconds["total"] == fastest and all(c["fits"] for c in roomy.candidates)
    smallest = roomy.smallest_peak_bytes
    assert smallest < roomy.peak_bytes
    tight = plan(cfg, smallest, pipe=tiny)
    assert tight.peak_bytes <= smallest and tight.predicted_seconds["total"] >= roomy.predicted_seconds["total"]
    mid_budget = (smallest + roomy.peak_bytes) // 2
    mid = plan(cfg, mid_budget, pipe=tiny)
    assert mid.peak_bytes <= mid_budget
    assert roomy.predicted_seconds["total"] <= mid.predicted_seconds["total"] <= tight.predicted_seconds["total"]
    # the chosen plan is the fastest candidate that fits
    assert mid.predicted_seconds["total"] == min(c["seconds"]["total"] for c in mid.candidates
                                                 if c["peak_bytes"] <= mid_budget)
    # the plan's prediction agrees with a full simulation of the chosen settings
    check = simulate(cfg, mid.settings, pipe=tiny, track_modules=False)
    assert abs(check.peak_bytes - mid.peak_bytes) <= 0.05 * mid.peak_bytes
    assert mid.memory_config()["offload"] == mid.settings.offload
    with pytest.raises(VidrtError, match=r"cannot fit: the smallest plan needs [0-9.]+ GiB"):
        plan(cfg, smallest - 1, pipe=tiny)


def test_planner_offers_sharded_weights_on_several_gpus():
    """With gpus > 1 the planner also weighs FSDP2-sharded weights (offload "shard"): per GPU 1/N of the
    denoiser plus the running and the prefetched block; on one GPU "shard" is refused with one clear line."""
    from vidrt.config import load_config
    from vidrt.core.errors import VidrtError
    from vidrt.memory.planner import plan
    from vidrt.memory.simulate import MemorySettings, run_session
    from vidrt.memory.simulate.placement import account

    cfg = load_config(REPO / "samples/wan-random.yaml", [])
    offloads = {gpus: {c["settings"]["offload"] for c in plan(cfg, "100GiB", gpus=gpus).candidates} for gpus in (1, 2)}
    assert offloads[2] - offloads[1] == {"shard"}
    sess = run_session(cfg, [MemorySettings()], [False], ranks=2, track_modules=False)
    den = "transformer"
    assert sess.params[den] // 2 < sess.shard[den] < sess.params[den]
    rows = {}
    for mode in ("none", "shard"):
        stages, _, _ = account(sess.stages, sess.params, sess.group, MemorySettings(offload=mode), sess.device,
                                sess.shard)
        rows[mode] = next(s for s in stages if s["name"] == "denoise")
    assert rows["none"]["param_bytes"] - rows["shard"]["param_bytes"] == sess.params[den] - sess.shard[den]
    with pytest.raises(VidrtError, match="memory.offload: shard splits the weights over several GPUs"):
        account(sess.stages, sess.params, sess.group, MemorySettings(offload="shard"), sess.device, {})


def test_slicing_candidates_halve_the_axes_the_adapter_names():
    """Wan slices its token sequence (latent frames x patches), the UNets the CFG batch of frames and the
    latent positions; the planner halves each axis up to 1/16."""
    from types import SimpleNamespace

    from vidrt.memory.planner import slicing_candidates
    from vidrt.models import get_adapter

    cfg = SimpleNamespace(guidance=5.0)
    wan = slicing_candidates(cfg, get_adapter("wan"), 81, 480, 832)
    assert [(c.slicing, c.chunk_frames, c.chunk_tokens, c.chunk_positions) for c in wan] == [
        (False, None, None, None), (True, None, 16380, None), (True, None, 8190, None), (True, None, 4095, None),
        (True, None, 2048, None)]
    ad = slicing_candidates(cfg, get_adapter("animatediff"), 16, 512, 512)
    assert [(c.chunk_frames, c.chunk_tokens, c.chunk_positions) for c in ad] == [
        (None, None, None), (16, None, 2048), (8, None, 1024), (4, None, 512), (2, None, 256)]
    no_cfg = slicing_candidates(SimpleNamespace(guidance=1.0), get_adapter("animatediff"), 16, 512, 512)
    assert no_cfg[1].chunk_frames == 8


def test_a_roomy_budget_gets_no_slicing_and_no_offload():
    """Where everything fits, the fastest plan slices nothing and streams nothing (slicing and streaming only
    cost time); the listing holds every candidate with its predicted seconds."""
    from vidrt.config import load_config

    cfg = load_config(REPO / "samples/wan-random.yaml")
    p = plan(cfg, "100GiB", gpu="rtx4090")
    assert not p.settings.slicing and p.settings.offload == "none"
    assert len(p.candidates) == p.considered and all("total" in c["seconds"] for c in p.candidates)
    assert [c["seconds"]["total"] for c in p.candidates] == sorted(c["seconds"]["total"] for c in p.candidates)


def test_plan_output_is_a_memory_block_a_config_accepts():
    from vidrt.config import load_config, parse_config

    cfg = load_config(REPO / "samples/wan-random.yaml")
    smallest = plan(cfg, "100GiB", gpu="rtx4090").smallest_peak_bytes
    for budget in ("100GiB", smallest):
        block = plan(cfg, budget, gpu="rtx4090").memory_config()
        data = cfg.model_dump(mode="json")
        data["memory"] = block
        again = parse_config(data)
        assert again.memory.offload == block["offload"]
        assert settings_from_config(again).text_encoder == block["text_encoder"]


def test_budget_auto_is_the_gpu_memory_less_headroom():
    from vidrt.config import load_config
    from vidrt.core.units import GiB
    from vidrt.memory.target import auto_budget

    cfg = load_config(REPO / "samples/wan-random.yaml")
    assert auto_budget(cfg.model_copy(update={"devices": ["cpu"]})) is None      # no device limit on the CPU
    b = auto_budget(cfg.model_copy(update={"devices": ["cuda"]}), gpu="rtx4090")
    assert 22 * GiB < b < 24 * GiB


def test_a_fixed_key_prices_the_same_as_the_free_choice():
    """A config that fixes slicing or VAE tiling simulates one variant of that stage (named plainly, not
    `stage#i`); its plan must price that stage as the free plan prices the same settings (it was priced at
    0 s once, which made a fixed-key plan look faster than any other)."""
    from vidrt.config import load_config

    free = plan(load_config(REPO / "samples/wan-random.yaml"), "100GiB", gpu="rtx4090")
    by_settings = {tuple(sorted(c["settings"].items())): c["seconds"] for c in free.candidates}
    for fixed in (["memory.vae_tiling=on"], ["memory.slicing=off"], ["memory.slicing=off", "memory.vae_tiling=off"]):
        p = plan(load_config(REPO / "samples/wan-random.yaml", fixed), "100GiB", gpu="rtx4090")
        for c in p.candidates:
            want = by_settings[tuple(sorted(c["settings"].items()))]
            assert c["seconds"]["denoise"] > 0 and c["seconds"]["vae_decode"] > 0
            assert c["seconds"]["total"] == pytest.approx(want["total"], rel=0.02)
