"""Feature slicer, operator groups, exact GroupNorm, memory config (vidrt.engine.slicing, vidrt.engine.offload)."""
from __future__ import annotations

import contextlib
import json

import pytest
import torch
from torch import nn

import vidrt
from vidrt.models import get_adapter
from vidrt_dev.inputs import denoiser_inputs
from vidrt.engine.offload import OffloadConfig
from vidrt.engine.slicing import disable_slicing, enable_slicing
from vidrt_dev.counting import peak_activation_bytes

FAMILIES = ["wan", "animatediff", "i2vgen-xl"]


def _randomize_zeros(model: nn.Module) -> None:
    """Tiny twins zero-init some layers (motion-module proj_out, temporal conv4), which would make those
    branches identities and the exactness test blind to them: give them small random weights."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() and p.abs().max() == 0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.fixture(scope="module")
def pipes():
    out = {}
    for fam in FAMILIES:
        pipe = get_adapter(fam).tiny(0)
        _randomize_zeros(get_adapter(fam).denoiser(pipe))
        out[fam] = pipe
    return out


def _forwards_are_original(model: nn.Module) -> bool:
    return all("forward" not in m.__dict__ and not hasattr(m, "_vidrt_slicing_patch") for m in model.modules())


# ---------------------------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("batch,frames,chunks", [
    (2, 5, dict(chunk_frames=3, chunk_tokens=37, chunk_positions=37)),  # CFG batch, chunks not dividing
    (1, 1, dict(chunk_frames=1, chunk_tokens=5, chunk_positions=51)),   # one frame
    (2, 4, {}),                                                         # auto sizes
])
def test_sliced_denoiser_matches_unsliced(pipes, family, batch, frames, chunks):
    pipe = pipes[family]
    den = get_adapter(family).denoiser(pipe)
    kw = denoiser_inputs(family, den, batch, frames)
    with torch.no_grad():
        ref = den(**kw)[0]
        summary = enable_slicing(pipe, **chunks)
        try:
            assert sum(summary["patched"].values()) > 0
            out = den(**kw)[0]
        finally:
            disable_slicing(pipe)
        again = den(**kw)[0]
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() <= 1e-5
    assert torch.equal(again, ref)
    assert _forwards_are_original(den)


def test_sliced_path_really_runs(pipes, monkeypatch):
    """The exactness test must not pass by silently falling back to the original forwards."""
    from vidrt.engine.slicing import groupnorm, wan

    calls = {"block": 0, "stats": 0}
    block, stats = wan.sliced_block, groupnorm.group_stats

    def count_block(*a, **k):
        calls["block"] += 1
        return block(*a, **k)

    def count_stats(*a, **k):
        calls["stats"] += 1
        return stats(*a, **k)

    monkeypatch.setattr(wan, "sliced_block", count_block)
    monkeypatch.setattr("vidrt.engine.slicing.unet.group_stats", count_stats)
    for fam in FAMILIES:
        pipe = pipes[fam]
        den = get_adapter(fam).denoiser(pipe)
        enable_slicing(pipe, chunk_frames=2, chunk_tokens=16, chunk_positions=40)
        try:
            with torch.no_grad():
                den(**denoiser_inputs(fam, den, 1, 3))
        finally:
            disable_slicing(pipe)
    assert calls["block"] == len(pipes["wan"].transformer.blocks)
    assert calls["stats"] > 0


def test_exact_groupnorm_two_pass():
    from vidrt.engine.slicing.groupnorm import group_stats, normalize_chunk

    torch.manual_seed(0)
    norm = nn.GroupNorm(4, 8, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(2, 8, 5, 37) * 3 + 10  # a large mean: single-pass E[x^2]-E[x]^2 would lose digits
    mean, rstd = group_stats(x, 4, norm.eps, chunk=6)
    parts = [normalize_chunk(x[..., s:s + 6], norm, mean, rstd) for s in range(0, 37, 6)]
    with torch.no_grad():
        ref = norm(x)
    assert (torch.cat(parts, -1) - ref).abs().max().item() <= 1e-5


# ------------------------------------------------------------------------------------------------ memory
def _peak(fn) -> int:
    with torch.no_grad(), peak_activation_bytes() as pk:
        fn()
    return pk.peak


def test_wan_sliced_peak_follows_chunk_ratio():
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    dim, ffn = 64, 512
    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32,
                                  in_channels=4, out_channels=4, text_dim=16, freq_dim=32, ffn_dim=ffn,
                                  num_layers=1, rope_max_seq_len=64).eval()
    x = torch.randn(1, 4, 8, 32, 32)
    n_tokens = 8 * 16 * 16
    args = (x, torch.tensor([10]), torch.randn(1, 8, 16))
    unsliced = _peak(lambda: model(*args, return_dict=False))
    chunk = 128
    enable_slicing(model, chunk_tokens=chunk)
    try:
        sliced = _peak(lambda: model(*args, return_dict=False))
    finally:
        disable_slicing(model)
    stream = n_tokens * dim * 4
    # carried: residual stream, K, V (3 streams) + slack for the token/projection buffers; the rest of the
    # unsliced peak shrinks with the chunk ratio.
    bound = 4 * stream + unsliced * chunk / n_tokens
    assert sliced <= bound, (sliced, bound, unsliced)
    assert sliced * 3 < unsliced


def test_unet_sliced_peak_follows_chunk_ratio(pipes):
    pipe = pipes["animatediff"]
    den = pipe.unet
    batch, frames, size = 2, 8, 16
    kw = denoiser_inputs("animatediff", den, batch, frames, size=size)
    unsliced = _peak(lambda: den(**kw))
    chunk_frames, chunk_positions = 2, 64
    enable_slicing(pipe, chunk_frames=chunk_frames, chunk_positions=chunk_positions)
    try:
        sliced = _peak(lambda: den(**kw))
    finally:
        disable_slicing(pipe)
    # Input-sized tensors a UNet must keep (skip connections, block input/output) are not sliceable;
    # what happens inside a module shrinks with the larger of the two chunk ratios.
    ratio = max(chunk_frames / (batch * frames), chunk_positions / (size * size))
    level0 = batch * frames * 8 * size * size * 4  # one 8-channel feature map at full resolution, fp32
    bound = 12 * level0 + unsliced * ratio
    assert sliced <= bound, (sliced, bound, unsliced)
    assert sliced * 1.3 < unsliced


# ------------------------------------------------------------------------------------------ patching rules
def test_enable_twice_and_disable_restore_originals(pipes):
    pipe = pipes["animatediff"]
    den = pipe.unet
    kw = denoiser_inputs("animatediff", den, 1, 2)
    with torch.no_grad():
        ref = den(**kw)[0]
        den_ref = pipe.unet  # a reference held before enabling runs sliced afterwards
        first = enable_slicing(pipe)
        second = enable_slicing(pipe, chunk_frames=1)
        assert first["patched"] == second["patched"]
        assert "forward" in den_ref.down_blocks[0].resnets[0].__dict__
        out = den_ref(**kw)[0]
        assert disable_slicing(pipe) > 0
        assert disable_slicing(pipe) == 0
    assert (out - ref).abs().max().item() <= 1e-5
    assert _forwards_are_original(den)
    assert den.down_blocks[0].resnets[0].forward.__func__ is type(den.down_blocks[0].resnets[0]).forward


def test_composes_with_diffusers_hooks(pipes):
    """A diffusers hook added after slicing wraps the sliced forward; disabling slicing keeps the hook."""
    from diffusers.hooks import HookRegistry, ModelHook

    class Count(ModelHook):
        def __init__(self):
            super().__init__()
            self.n = 0

        def pre_forward(self, module, *args, **kwargs):
            self.n += 1
            return args, kwargs

    pipe = pipes["wan"]
    block = pipe.transformer.blocks[0]
    kw = denoiser_inputs("wan", pipe.transformer, 1, 3)
    with torch.no_grad():
        ref = pipe.transformer(**kw)[0]
        enable_slicing(pipe, chunk_tokens=7)
        hook = Count()
        HookRegistry.check_if_exists_or_initialize(block).register_hook(hook, "count")
        out = pipe.transformer(**kw)[0]
        disable_slicing(pipe)
        plain = pipe.transformer(**kw)[0]
        block._diffusers_hook.remove_hook("count", recurse=False)
    assert hook.n == 2
    assert (out - ref).abs().max().item() <= 1e-5
    assert torch.equal(plain, ref)
    assert block.forward.__func__ is type(block).forward


def _spy_wan_blocks(monkeypatch) -> list[tuple[int, int]]:
    """(tokens, chunk) of every sliced Wan block call from now on."""
    from vidrt.engine.slicing import wan

    seen: list[tuple[int, int]] = []
    block = wan.sliced_block

    def spy(blk, hidden_states, encoder_hidden_states, temb, rotary_emb, chunk, *args, **kwargs):
        seen.append((hidden_states.shape[1], chunk))
        return block(blk, hidden_states, encoder_hidden_states, temb, rotary_emb, chunk, *args, **kwargs)

    monkeypatch.setattr(wan, "sliced_block", spy)
    return seen


def test_bare_pipeline_built_without_vidrt_and_frames_match(monkeypatch):
    from diffusers import WanPipeline

    parts = get_adapter("wan").tiny(0).components
    pipe = WanPipeline(**parts)  # no vidrt preparation
    pipe.set_progress_bar_config(disable=True)

    def run():
        g = torch.Generator().manual_seed(0)
        return pipe(prompt="a red ball", num_frames=5, height=32, width=32, num_inference_steps=2,
                    guidance_scale=3.0, generator=g, output_type="pt").frames

    seen = _spy_wan_blocks(monkeypatch)
    with torch.no_grad():
        ref = run()
        assert seen == []
        vidrt.enable_slicing(pipe, chunk_tokens=3)
        out = run()
        vidrt.disable_slicing(pipe)
    # 8 tokens (2 latent frames x 2 x 2) in chunks of 3, 3, 2: every block call of both steps ran sliced
    # (was chunk_tokens=11: one chunk, so a chunking bug could not show)
    assert seen == [(8, 3)] * (2 * 2 * len(pipe.transformer.blocks))
    assert (out - ref).abs().max().item() <= 1e-5   # measured 1.2e-7 (1, 2 and 4 threads)


def test_unsupported_object_errors():
    from vidrt.core.errors import VidrtError

    with pytest.raises(VidrtError, match="unsupported model class Linear"):
        enable_slicing(nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"chunk_tokens: expected a positive integer or None, got 0"):
        enable_slicing(get_adapter("wan").tiny(0), chunk_tokens=0)


# ---------------------------------------------------------------------------------------- fake tensors
def test_works_under_fake_tensor_mode():
    from diffusers import WanTransformer3DModel
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=64,
                                      in_channels=16, out_channels=16, text_dim=64, freq_dim=32, ffn_dim=1024,
                                      num_layers=2, rope_max_seq_len=256).eval()
        x = torch.randn(1, 16, 9, 32, 48)
        args = (x, torch.tensor([500]), torch.randn(1, 32, 64))
        unsliced = _peak(lambda: model(*args, return_dict=False))
        enable_slicing(model)
        with torch.no_grad():
            out = model(*args, return_dict=False)[0]
        sliced = _peak(lambda: model(*args, return_dict=False))
        disable_slicing(model)
    assert tuple(out.shape) == (1, 16, 9, 32, 48)
    assert sliced * 2 < unsliced


# ------------------------------------------------------------------------------------------ memory config
def test_memory_settings_report_json_and_keep_frames(monkeypatch):
    from vidrt.config import parse_config
    from vidrt.core.errors import VidrtError
    from vidrt.memory.settings import settings_from_config
    from vidrt.run.memory_setup import apply_settings

    pipe = get_adapter("wan").tiny(0)
    base = {"model": {"family": "wan", "path": "x"}, "prompt": "p", "height": 32, "width": 32}

    def run():
        g = torch.Generator().manual_seed(0)
        return pipe(prompt="a red ball", num_frames=5, height=32, width=32, num_inference_steps=2,
                    guidance_scale=3.0, generator=g, output_type="pt").frames

    seen = _spy_wan_blocks(monkeypatch)
    with torch.no_grad():
        ref = run()
        cfg = parse_config({**base, "memory": {"slicing": {"tokens": 3}, "offload": "group", "vae_tiling": "auto"}})
        applied = apply_settings(pipe, settings_from_config(cfg), torch.device("cpu"), 32, 32)
        out = run()
    assert json.loads(json.dumps(applied)) == applied
    assert applied["slicing"]["tokens"] == 3 and applied["slicing"]["frames"] == "auto"
    assert applied["offload"]["offload"] == "group"
    assert applied["vae"]["vae_frame_buffer"] is True
    assert seen == [(8, 3)] * (2 * 2 * len(pipe.transformer.blocks))   # 8 tokens really chunked (was 13: one chunk)
    assert (out - ref).abs().max().item() <= 1e-5   # measured 1.2e-7
    with pytest.raises(VidrtError, match="memory.slicing"):
        parse_config({**base, "memory": {"slicing": {"rows": 2}}})
    with pytest.raises(VidrtError, match="memory.offload"):
        parse_config({**base, "memory": {"slicing": "off", "offload": "disk"}})
    with pytest.raises(VidrtError, match="memory.offload"):
        OffloadConfig("disk")


def test_release_text_encoder_and_wan_vae_buffer():
    from vidrt.engine.offload import release_text_encoder
    from vidrt.engine.vae import VaeConfig, disable_vae_settings, enable_vae_settings

    pipe = get_adapter("wan").tiny(0)
    assert release_text_encoder(pipe, "cpu") == {"text_encoder": "unchanged"}
    assert release_text_encoder(pipe, "cpu", delete=True) == {"text_encoder": "deleted"}
    assert pipe.text_encoder is None
    z = torch.randn(1, 16, 3, 8, 8)
    with torch.no_grad():
        ref = pipe.vae.decode(z, return_dict=False)[0]
        enable_vae_settings(pipe, VaeConfig("auto", 64, 64))
        out = pipe.vae.decode(z, return_dict=False)[0]
        disable_vae_settings(pipe)
    assert torch.equal(out, ref)
    assert "_decode" not in pipe.vae.__dict__


@pytest.mark.parametrize("hw,stride,variant", [
    ((48, 64), 24, "2.1"), ((40, 72), 24, "2.1"),     # even tiles; narrow last row/column
    ((48, 64), 32, "2.1"),                           # tiles that do not overlap
    ((64, 96), 32, "2.2-ti2v"), ((48, 112), 32, "2.2-ti2v"),   # Wan 2.2 VAE: patchified tiles, 16x
])
def test_wan_tiled_decode_via_host_is_bit_identical(hw, stride, variant):
    """The tile-at-a-time decode (blends on the host) equals diffusers' tiled_decode, through decode_stream."""
    from vidrt.models.wan_vae import tiled_decode_via_host, tiles_needed

    adapter = get_adapter("wan")
    pipe = adapter.tiny(0, variant=variant)
    vae = pipe.vae
    size = 32 if variant == "2.1" else 48
    vae.enable_tiling(tile_sample_min_height=size, tile_sample_min_width=size, tile_sample_stride_height=stride,
                      tile_sample_stride_width=stride)
    h, w = hw
    ratio = vae.spatial_compression_ratio
    z = torch.randn(1, vae.config.z_dim, 3, h // ratio, w // ratio, generator=torch.Generator().manual_seed(0))
    assert tiles_needed(vae, z)
    with torch.no_grad():
        ref = vae.tiled_decode(z, return_dict=False)[0]
        chunks = list(tiled_decode_via_host(vae, z, chunk_frames=4))
        streamed = list(adapter.decode_stream(pipe, z))
    assert [c.shape[2] for c in chunks] == [4, 4, 1] and ref.shape[2] == 9
    assert torch.equal(torch.cat(chunks, dim=2), ref)
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        ref_scaled = vae.tiled_decode(z / (1.0 / std) + mean, return_dict=False)[0]   # decode_stream's arithmetic
    assert torch.equal(torch.cat(streamed, dim=2), ref_scaled.float())


@contextlib.contextmanager
def _output_sizes(blocks):
    """{index: (H, W) of the block's last output} for each of `blocks` while the context is open."""
    sizes: dict[int, tuple[int, int]] = {}
    handles = [b.register_forward_hook(lambda m, a, o, i=i: sizes.__setitem__(i, tuple(o.shape[-2:])))
               for i, b in enumerate(blocks)]
    try:
        yield sizes
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("family", ["animatediff", "i2vgen-xl"])
def test_up_block_upsampler_is_deferred_into_the_next_group(pipes, family):
    """A grouped up block hands its output on before upsampling (the next block upsamples per frame chunk),
    and the result stays exact when the next block falls back to the stock forward (FreeU here) or when a
    hook replaces the block output with a new tensor (as a step policy's forecast does)."""
    pipe = pipes[family]
    den = get_adapter(family).denoiser(pipe)
    ups = den.up_blocks
    kw = denoiser_inputs(family, den, 2, 3)
    with _output_sizes(ups) as shapes, torch.no_grad():
        ref = den(**kw)[0]
        ref_shapes = dict(shapes)
        enable_slicing(pipe, chunk_frames=2, chunk_positions=40)
        try:
            out = den(**kw)[0]
        finally:
            disable_slicing(pipe)
    deferred = [i for i in range(len(ups) - 1) if ups[i].upsamplers is not None]
    assert deferred, "the tiny UNet needs an up block with an upsampler before another up block"
    for i in deferred:
        assert shapes[i] == tuple(s // 2 for s in ref_shapes[i])
    assert (out - ref).abs().max().item() <= 1e-5

    # the next block falls back to the stock forward: the pending upsample is applied before it
    last = ups[deferred[-1] + 1]
    clone = ups[deferred[-1]].register_forward_hook(lambda m, a, o: o.clone())
    try:
        last.s1, last.s2, last.b1, last.b2 = 0.9, 0.2, 1.1, 1.2
        with torch.no_grad():
            ref2 = den(**kw)[0]
            enable_slicing(pipe, chunk_frames=2, chunk_positions=40)
            try:
                out2 = den(**kw)[0]
            finally:
                disable_slicing(pipe)
    finally:
        clone.remove()
        for k in ("s1", "s2", "b1", "b2"):
            setattr(last, k, None)
    assert not torch.equal(ref2, ref)
    assert (out2 - ref2).abs().max().item() <= 1e-5


def test_up_block_keeps_its_upsampler_under_block_level_group_offloading():
    """Block-level group offloading moves a block's weights off the accelerator when it returns, so a
    deferred upsampler would run on offloaded weights (seen on CUDA): such blocks upsample themselves."""
    from diffusers.hooks import apply_group_offloading

    pipe = get_adapter("animatediff").tiny(0)
    den = pipe.unet
    _randomize_zeros(den)
    kw = denoiser_inputs("animatediff", den, 2, 3)
    ups = den.up_blocks
    with _output_sizes(ups) as shapes, torch.no_grad():
        ref = den(**kw)[0]
        stock = dict(shapes)
        enable_slicing(pipe, chunk_frames=2, chunk_positions=40)
        apply_group_offloading(den, onload_device=torch.device("cpu"), offload_device=torch.device("cpu"),
                               offload_type="block_level", num_blocks_per_group=1)
        out = den(**kw)[0]
    assert any(b.upsamplers is not None for b in ups[:-1])
    assert shapes == stock  # every block upsampled itself
    assert (out - ref).abs().max().item() <= 1e-5
