"""Slices across ranks (vidrt.engine.distributed): 2 CPU processes over gloo give the same numbers as one process.

Ranks are spawned processes (vidrt_dev.ranks.run_ranks), each building the same tiny random-init
pipeline; the single-process reference is computed in the same rank before the hooks are attached.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from vidrt_dev.ranks import run_ranks

TOL = 1e-5


def _exactness(ctx):
    """Runs on every rank; returns max abs differences against the single-process result."""
    import vidrt.engine.distributed as vd
    from vidrt_dev.ranks import pipeline_latents, wan_tiny_call_inputs
    from vidrt.models import get_adapter
    from vidrt.engine.slicing import enable_slicing

    out = {}
    # Wan, one denoiser call, sequence parallel: 3x5x7 = 105 tokens (53 / 52 per rank), in-rank chunks of 16.
    adapter, pipe, den, kw = wan_tiny_call_inputs()
    with torch.no_grad():
        ref = den(**kw)[0]
    enable_slicing(pipe, chunk_tokens=16)
    for attention, groups in (("ulysses", None), ("gather", None), ("gather", 1)):
        # all-to-all over heads; K/V gathered per head / all heads at once
        vd.enable_distributed(pipe, ctx, adapter=adapter, config=vd.DistributedConfig(guidance=1.0, mode="sequence", head_groups=groups, attention=attention))
        with torch.no_grad():
            got = den(**kw)[0]
        out[f"wan_sp_call_{attention}{groups}"] = (got - ref).abs().max().item()
    out["wan_sp_calls"] = vd.distributed_state(pipe, adapter).hooks["sequence"].calls["parallel"]
    vd.disable_distributed(pipe, adapter)
    # 4 heads over 2 ranks: Ulysses in 2 rounds of one head per rank (default) and in 1 round of two
    from diffusers import WanTransformer3DModel

    torch.manual_seed(3)
    den4 = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=8, in_channels=16,
                                 out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=1,
                                 cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32).eval()
    holder = SimpleNamespace(transformer=den4)
    with torch.no_grad():
        ref4 = den4(**kw)[0]
    enable_slicing(den4, chunk_tokens=16)
    for groups in (None, 1):
        vd.enable_distributed(holder, ctx, adapter=adapter, config=vd.DistributedConfig(guidance=1.0, mode="sequence", head_groups=groups, attention="ulysses"))
        with torch.no_grad():
            out[f"wan4_ulysses{groups}"] = (den4(**kw)[0] - ref4).abs().max().item()
        vd.disable_distributed(holder, adapter)
    # Wan pipeline (2 steps, CFG 5): sequence parallel, CFG parallel.
    ref_lat = pipeline_latents(adapter.tiny(0), adapter, 5.0)
    for mode in ("sequence", "cfg"):
        vd.enable_distributed(pipe, ctx, adapter=adapter, config=vd.DistributedConfig(guidance=5.0, mode=mode))   # (sequence: Ulysses, 2 heads over 2 ranks)
        lat = pipeline_latents(pipe, adapter, 5.0)
        out[f"wan_{mode}"] = (lat - ref_lat).abs().max().item()
        out[f"wan_{mode}_latents"] = lat
        out[f"wan_{mode}_hooks"] = {k: dict(h.calls) for k, h in vd.distributed_state(pipe, adapter).hooks.items()}
    # weights sharded with FSDP2 (half of every weight per rank), sequence parallel on top
    total = sum(p.numel() for p in den.parameters())
    vd.enable_distributed(pipe, ctx, adapter=adapter, config=vd.DistributedConfig(guidance=1.0, mode="sequence", shard=True))
    out["wan_shard_local_fraction"] = sum(p.to_local().numel() for p in den.parameters()) / total
    with torch.no_grad():
        out["wan_shard_call"] = (den(**kw)[0] - ref).abs().max().item()
    vd.disable_distributed(pipe, adapter)

    # AnimateDiff (batch 2 = uncond+cond per call): CFG parallel splits the batch.
    adapter = get_adapter("animatediff")
    pipe = adapter.tiny(0)
    unet = adapter.denoiser(pipe)
    g = torch.Generator().manual_seed(0)
    x, ehs = torch.randn(2, 4, 4, 4, 4, generator=g), torch.randn(8, 16, 32, generator=g)
    with torch.no_grad():
        ref = unet(x, torch.tensor(999), encoder_hidden_states=ehs).sample
        ref_halves = torch.cat([unet(x[i:i + 1], torch.tensor(999), encoder_hidden_states=ehs[4 * i:4 * i + 4]).sample
                                for i in range(2)])
    ref_lat = pipeline_latents(pipe, adapter, 5.0, steps=1)
    # the same arithmetic as CFG parallel in one process: each half of the batch in its own call
    original = unet.forward

    def halves(sample, timestep, encoder_hidden_states, **kw):
        outs = [original(s, timestep, encoder_hidden_states=e, **kw)[0]
                for s, e in zip(sample.chunk(2), encoder_hidden_states.chunk(2))]
        return SimpleNamespace(sample=torch.cat(outs))

    unet.forward = halves
    ref_lat_halves = pipeline_latents(pipe, adapter, 5.0, steps=1)
    del unet.forward
    vd.enable_distributed(pipe, ctx, adapter=adapter, config=vd.DistributedConfig(guidance=5.0))
    with torch.no_grad():
        got = unet(x, torch.tensor(999), encoder_hidden_states=ehs).sample
    out["unet_cfg_call"] = (got - ref).abs().max().item()
    out["unet_cfg_call_vs_halves"] = (got - ref_halves).abs().max().item()
    lat = pipeline_latents(pipe, adapter, 5.0, steps=1)
    out["unet_cfg_latents"] = (lat - ref_lat).abs().max().item()
    out["unet_cfg_latents_vs_halves"] = (lat - ref_lat_halves).abs().max().item()
    out["unet_hooks"] = dict(vd.distributed_state(pipe, adapter).hooks["cfg"].calls)

    # AnimateDiff, frame parallel: 4 frames over 2 ranks, motion modules on positions after an all-to-all.
    vd.disable_distributed(pipe, adapter)
    vd.enable_distributed(pipe, ctx, adapter=adapter, config=vd.DistributedConfig(guidance=5.0, mode="sequence"))
    with torch.no_grad():
        got = unet(x, torch.tensor(999), encoder_hidden_states=ehs).sample
    out["unet_fp_call"] = (got - ref).abs().max().item()
    lat = pipeline_latents(pipe, adapter, 5.0, steps=1)
    out["unet_fp_latents"] = (lat - ref_lat).abs().max().item()
    out["unet_fp_hooks"] = dict(vd.distributed_state(pipe, adapter).hooks["frames"].calls)
    enable_slicing(pipe, chunk_frames=1, chunk_positions=3)   # the in-rank slicer inside each rank's share
    with torch.no_grad():
        got = unet(x, torch.tensor(999), encoder_hidden_states=ehs).sample
    out["unet_fp_sliced_call"] = (got - ref).abs().max().item()
    vd.disable_distributed(pipe, adapter)
    vd.enable_distributed(pipe, ctx, adapter=adapter, config=vd.DistributedConfig(guidance=5.0, mode="sequence", shard=True))   # + FSDP2-sharded weights
    with torch.no_grad():
        got = unet(x, torch.tensor(999), encoder_hidden_states=ehs).sample
    out["unet_fp_shard_call"] = (got - ref).abs().max().item()
    vd.disable_distributed(pipe, adapter)

    # I2VGen-XL (batch 2 = uncond+cond, image-conditioned): CFG parallel
    from vidrt_dev.images import conditioning_image

    adapter = get_adapter("i2vgen-xl")
    pipe = adapter.tiny(0)
    image = conditioning_image(32)
    ref_lat = pipeline_latents(pipe, adapter, 5.0, steps=1, image=image)
    vd.enable_distributed(pipe, ctx, adapter=adapter, config=vd.DistributedConfig(guidance=5.0))
    out["i2vgen_cfg_latents"] = (pipeline_latents(pipe, adapter, 5.0, steps=1, image=image) - ref_lat).abs().max().item()
    out["i2vgen_hooks"] = dict(vd.distributed_state(pipe, adapter).hooks["cfg"].calls)
    vd.disable_distributed(pipe, adapter)
    return out


def test_i2vgen_cfg_parallel_exact(exactness):
    """The batch halves of I2VGen-XL's CFG on two ranks: the same latents (oneDNN's batch-1 vs batch-2 conv
    arithmetic differs by ~1e-6 per call, as for AnimateDiff)."""
    for rank in exactness:
        assert rank["i2vgen_cfg_latents"] <= 1e-4, rank["i2vgen_cfg_latents"]
        assert rank["i2vgen_hooks"]["batch"] >= 1 and rank["i2vgen_hooks"]["replicated"] == 0


def test_sharded_weights_exact(exactness):
    """FSDP2 leaves each of 2 ranks about half of the weights; outputs stay the single-process ones."""
    for rank in exactness:
        assert rank["wan_shard_local_fraction"] <= 0.55, rank["wan_shard_local_fraction"]
        assert rank["wan_shard_call"] <= TOL, rank["wan_shard_call"]
        assert rank["unet_fp_shard_call"] <= TOL, rank["unet_fp_shard_call"]


def test_unet_frame_parallel_exact(exactness):
    """AnimateDiff split by frames over 2 ranks (temporal ops by positions) equals one process."""
    for rank in exactness:
        assert rank["unet_fp_call"] <= TOL, rank
        assert rank["unet_fp_sliced_call"] <= TOL, rank
        assert rank["unet_fp_latents"] <= 1e-4, rank
        assert rank["unet_fp_hooks"] == {"parallel": 2, "replicated": 0}   # the call + 1 pipeline step


def _exactness_then_failure(ctx, cfg_path, out):
    """One pair of processes for every check (each spawn costs seconds of imports): the exactness runs,
    then a render in which rank 1 fails — which ends the process group, so it comes last."""
    result = _exactness(ctx)
    try:
        _render_with_failure(ctx, cfg_path, out)
        result["failure"] = None
    except Exception as exc:  # noqa: BLE001 - the test looks at what each rank raised
        result["failure"] = {"type": type(exc).__name__, "message": str(exc)}
    return result


@pytest.fixture(scope="module")
def ranks(repo, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fail")
    out = folder / "fail.mp4"
    # an absolute config path: the ranks find its model from any working directory
    results = run_ranks(_exactness_then_failure, 2, str(repo / "samples" / "wan-random.yaml"), str(out), timeout=300)
    for r in results:
        assert r["ok"], r.get("tb", r)
    return [r["value"] for r in results], folder


@pytest.fixture(scope="module")
def exactness(ranks):
    return ranks[0]


def test_wan_sequence_parallel_call_exact(exactness):
    for rank in exactness:
        assert rank["wan_sp_calls"] > 0
        assert rank["wan_sp_call_ulyssesNone"] <= TOL
        assert rank["wan_sp_call_gatherNone"] <= TOL
        assert rank["wan_sp_call_gather1"] <= TOL
        assert rank["wan4_ulyssesNone"] <= TOL and rank["wan4_ulysses1"] <= TOL


@pytest.mark.parametrize("mode", ["sequence", "cfg"])
def test_wan_pipeline_exact(exactness, mode):
    for rank in exactness:
        assert rank[f"wan_{mode}"] <= TOL, rank
    hooks = exactness[0][f"wan_{mode}_hooks"]
    if mode == "cfg":   # every step's pair ran as one call per rank; the uncond call reused the gathered result
        assert hooks["cfg"]["pair"] == 2 and hooks["cfg"]["pair_reused"] == 2
    else:
        assert hooks["sequence"]["parallel"] == 4 and hooks["sequence"]["replicated"] == 0
    assert torch.equal(exactness[0][f"wan_{mode}_latents"], exactness[1][f"wan_{mode}_latents"])  # ranks hold identical latents


def test_unet_cfg_parallel_exact(exactness):
    for rank in exactness:
        assert rank["unet_hooks"]["batch"] > 0
        assert rank["unet_cfg_call"] <= TOL
        assert rank["unet_cfg_call_vs_halves"] == 0.0
        # Batch 1 vs batch 2 changes oneDNN's conv arithmetic by ~5e-7 per call, which DDIM's 1/sqrt(alpha_bar)
        # near t=T amplifies over the steps; against the same per-half arithmetic the run is bit-identical.
        assert rank["unet_cfg_latents_vs_halves"] == 0.0
        assert rank["unet_cfg_latents"] <= 1e-4


def _render_with_failure(ctx, cfg_path, out):
    """A render where rank 1's denoiser fails on its second call."""
    from vidrt.config import load_config
    from vidrt.models import get_adapter
    from vidrt.run.render import render

    cfg = load_config(cfg_path, ["steps=2"])
    adapter = get_adapter("wan")
    pipe = adapter.load(cfg.model.path)
    embedder = adapter.denoiser(pipe).condition_embedder
    calls = [0]
    original = embedder.forward

    def failing(*args, **kwargs):
        calls[0] += 1
        if ctx.rank == 1 and calls[0] == 2:
            raise RuntimeError("injected failure on rank 1")
        return original(*args, **kwargs)

    embedder.forward = failing
    render(cfg, out, pipe=pipe, show_progress=False, checkpoints=False)


def test_rank_failure_stops_every_rank(ranks):
    values, folder = ranks
    assert values[1]["failure"]["type"] == "RuntimeError" and "injected failure" in values[1]["failure"]["message"]
    assert values[0]["failure"]["type"] == "DistributedError", values[0]["failure"]
    assert "another rank failed" in values[0]["failure"]["message"]
    assert not [p for p in folder.iterdir() if p.suffix in (".mp4", ".json")]   # no partial output


@pytest.mark.slow
def test_torchrun_cli_matches_single_process(repo, tmp_path):
    from vidrt.config import load_config
    from vidrt.run.render import render
    from vidrt.run.video import read_video

    single = render(load_config(repo / "samples/wan-random.yaml", ["steps=1"]), tmp_path / "one.mp4",
                    show_progress=False, checkpoints=False)
    out = tmp_path / "two.mp4"
    # torchrun's own module (the console script's entry point) in this interpreter: always there with torch, so
    # the test never skips for a missing script
    torchrun = [sys.executable, "-m", "torch.distributed.run"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VIDRT_DIST_TIMEOUT": "120"}
    done = subprocess.run([*torchrun, "--standalone", "--nproc-per-node", "2", "-m", "vidrt", "render",
                           "samples/wan-random.yaml", "-o", str(out), "--set", "steps=1", "--quiet"],
                          capture_output=True, text=True, cwd=repo, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["distributed"]["world"] == 2 and side["frames"] == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.json", "one.mp4", "two.json", "two.mp4"]
    a, b = read_video(single.video_path), read_video(out)
    assert a.shape == b.shape == (9, 32, 32, 3)
    assert (a.astype(int) - b.astype(int)).__abs__().max() == 0


def test_shard_without_torchrun_is_one_clear_error(run_cli, tmp_path):
    out = tmp_path / "s.mp4"
    result = run_cli("render", "samples/wan-random.yaml", "-o", out, "--set", "steps=1",
                     "--set", "memory.offload=shard", "--quiet")
    assert result.exit_code != 0 and "memory.offload: shard splits the weights over several ranks" in result.output
    assert not out.exists()


def test_temporal_exchange_puts_back_instance_forwards():
    """Inside a temporal op the GroupNorms run with statistics summed over ranks; afterwards each norm's
    forward is exactly what it was - including an instance-level one such as an offloading hook's."""
    from vidrt.engine.distributed import comm, unet_fp

    ctx = comm.simulated_context(2)
    comm.make_groups(ctx, 1, 2)
    act = unet_fp._Active(ctx, frames=4)
    hooked, plain = torch.nn.GroupNorm(2, 4), torch.nn.GroupNorm(2, 4)

    def marker(t):
        return t

    hooked.forward = marker
    module = torch.nn.Sequential(hooked, plain)
    seen = []

    def inner(hidden_states, num_frames):
        seen.append((hooked.forward is marker, "forward" in plain.__dict__))
        return module(hidden_states)

    x = torch.randn(2, 4, 1, 3)
    out = unet_fp.TemporalExchangeHook._temporal(module, inner, x, 4, {}, act)
    assert seen == [(False, True)]                      # both replaced during the op
    assert hooked.forward is marker and "forward" not in plain.__dict__
    F = torch.nn.functional
    expected = F.group_norm(F.group_norm(x, 2, hooked.weight, hooked.bias, hooked.eps), 2, plain.weight, plain.bias,
                            plain.eps)
    assert torch.allclose(out, expected, atol=1e-5)     # (a simulated group: the sums are this rank's own)
