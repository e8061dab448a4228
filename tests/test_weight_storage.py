"""fp8 weight storage (vidrt.engine.weights): the output moves by the measured amount (so it applied) and no
more, the bytes are what the counting function predicts (also on meta and fake tensors), the precision-critical
layers stay in the compute dtype, slicing still gives what it gives unsliced, the order with group offloading
is enforced, and disable is exact only when the originals were kept.

Tolerances are bands around the error measured on these tiny random twins (CPU, 1 and 2 threads gave the same
numbers): fp8 rounds every cast weight by ~2.6% (relative L2), which these models turn into the errors below."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import vidrt
from vidrt.core.errors import VidrtError
from vidrt.engine.offload import OffloadConfig, disable_offload, enable_offload
from vidrt.engine.weights import (WeightStorageConfig, cast_layers, disable_weight_storage, enable_weight_storage,
                                  weight_bytes_under_storage, weight_storage_on)
from vidrt.models import get_adapter
from vidrt_dev.inputs import denoiser_inputs

FAMILIES = ("wan", "animatediff")
KEEP = WeightStorageConfig(keep_originals=True)
# denoiser forward (batch 2, 4 frames), relative L2 error vs full precision: measured e4m3 / e5m2
FORWARD_REL = {"wan": (0.01129, 0.02351), "animatediff": (0.07808, 0.1511)}
# pipeline frames in [0, 1] (2 steps, seed 0): measured max |fp8 - native| with e4m3
FRAMES_MAX = {"wan": 7.01e-4, "animatediff": 0.0577}


def _frames(pipe, family: str) -> np.ndarray:
    g = torch.Generator().manual_seed(0)
    out = pipe(prompt="a red circle moves left on a blue background", negative_prompt="", height=32, width=32,
               num_frames=5 if family == "wan" else 3, num_inference_steps=2, generator=g, output_type="np",
               guidance_scale=5.0 if family == "wan" else 7.5)
    return np.asarray(out.frames[0])


def _tiny(family: str):
    pipe = get_adapter(family).tiny(0)
    pipe.set_progress_bar_config(disable=True)
    return pipe, get_adapter(family).denoiser(pipe)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


# ------------------------------------------------------------------------------------------- quality
@pytest.mark.parametrize("family", FAMILIES)
def test_fp8_moves_the_output_by_the_measured_amount(family):
    pipe, den = _tiny(family)
    kw = denoiser_inputs(family, den, 2, 4)
    with torch.no_grad():
        ref = den(**kw)[0]
        frames_ref = _frames(pipe, family)
        errors = []
        for storage in ("fp8", "fp8_e5m2"):
            enable_weight_storage(pipe, WeightStorageConfig(storage, keep_originals=True))
            errors.append(_rel(den(**kw)[0], ref))
            if storage == "fp8":
                frames = _frames(pipe, family)
            disable_weight_storage(pipe)
        assert torch.equal(den(**kw)[0], ref)                 # the kept originals came back exactly
    for err, measured in zip(errors, FORWARD_REL[family]):
        assert 0.5 * measured < err < 1.5 * measured, (errors, FORWARD_REL[family])
    assert errors[1] > errors[0]                              # e5m2 keeps fewer mantissa bits than e4m3
    diff = np.abs(frames - frames_ref).max()
    assert 0 < diff <= 2 * FRAMES_MAX[family], diff           # not identical (it applied), and close


def test_lossy_disable_keeps_the_rounded_weights():
    pipe, den = _tiny("wan")
    name = cast_layers(den)[0]
    original = den.get_submodule(name).weight.detach().clone()
    enable_weight_storage(pipe)
    with pytest.raises(VidrtError, match=r"weight storage: transformer's weights were stored in float8_e4m3fn without "
                                         r"keeping the originals, so they cannot be restored \(fp8 rounding is "
                                         r"lossy\); reload the model, or pass lossy=True to keep the rounded "
                                         r"weights in float32"):
        disable_weight_storage(pipe)
    assert weight_storage_on(den)                              # the refusal changed nothing
    assert disable_weight_storage(pipe, lossy=True) == {"transformer": "upcast (lossy)"}
    w = den.get_submodule(name).weight
    assert w.dtype == torch.float32 and not weight_storage_on(den)
    assert torch.equal(w, original.to(torch.float8_e4m3fn).float()) and not torch.equal(w, original)
    assert all("forward" not in m.__dict__ for m in den.modules())


# ------------------------------------------------------------------------------------------- bytes
@pytest.mark.parametrize("family", FAMILIES)
def test_bytes_after_enable_are_the_counted_bytes(family):
    pipe, den = _tiny(family)
    counted = weight_bytes_under_storage(den)
    names = set(cast_layers(den))
    cast_elems = sum(p.numel() for n, m in den.named_modules() if n in names for p in m.parameters())
    before = sum(p.numel() * p.element_size() for p in den.parameters()) + \
        sum(b.numel() * b.element_size() for b in den.buffers())
    summary = enable_weight_storage(pipe)
    after = sum(p.numel() * p.element_size() for p in den.parameters()) + \
        sum(b.numel() * b.element_size() for b in den.buffers())
    assert after == counted == before - 3 * cast_elems        # float32 -> one byte per cast weight
    key = "transformer" if family == "wan" else "unet"
    assert summary["models"][key]["bytes_before"] == before and summary["models"][key]["bytes_after"] == after
    assert summary["models"][key]["layers_cast"] == len(names)
    assert cast_elems > 0


def test_counting_works_on_meta_and_fake_tensors():
    from diffusers import WanTransformer3DModel
    from torch._subclasses.fake_tensor import FakeTensorMode

    _, real = _tiny("wan")
    config = dict(real.config)
    expected = weight_bytes_under_storage(real)
    with torch.device("meta"):
        meta = WanTransformer3DModel.from_config(config)
    with FakeTensorMode():
        fake = WanTransformer3DModel.from_config(config)
    assert weight_bytes_under_storage(meta) == weight_bytes_under_storage(fake) == expected
    block = weight_bytes_under_storage(meta, under="blocks.0")
    block_params = sum(p.numel() for p in meta.blocks[0].parameters())
    cast_in_block = sum(p.numel() for n, m in meta.named_modules() if n in set(cast_layers(meta))
                        and n.startswith("blocks.0.") for p in m.parameters())
    assert block == 4 * block_params - 3 * cast_in_block
    bf16 = meta.to(torch.bfloat16)
    e5m2 = WeightStorageConfig("fp8_e5m2")
    assert weight_bytes_under_storage(bf16, e5m2, under="blocks.0") == 2 * block_params - cast_in_block


# ----------------------------------------------------------------------------------- which layers
@pytest.mark.parametrize("family,kept,cast", [
    ("wan", ("patch_embedding", "condition_embedder.time_embedder.linear_1", "proj_out"),
     ("blocks.0.attn1.to_q", "blocks.1.ffn.net.2")),
    ("animatediff", ("conv_in", "conv_out", "time_embedding.linear_1"),
     ("down_blocks.0.resnets.0.conv1", "mid_block.motion_modules.0.transformer_blocks.0.attn1.to_q")),
])
def test_skipped_layers_stay_in_compute_dtype_and_cast_layers_compute_upcast(family, kept, cast, monkeypatch):
    pipe, den = _tiny(family)
    enable_weight_storage(pipe)
    for name in kept:
        assert den.get_submodule(name).weight.dtype == torch.float32, name
    assert all(p.dtype == torch.float32 for n, m in den.named_modules() if "norm" in n.split(".")[-1]
               for p in m.parameters())
    layers = [den.get_submodule(n) for n in cast]
    for m in layers:
        assert m.weight.dtype == torch.float8_e4m3fn
    watched = {id(m.weight): n for n, m in zip(cast, layers)}
    seen = {}

    def spy(op):
        def call(x, weight, *args, **kwargs):
            if id(weight) in watched:
                seen[watched[id(weight)]] = weight.dtype
            return op(x, weight, *args, **kwargs)
        return call

    for op in ("linear", "conv2d"):
        monkeypatch.setattr(torch.nn.functional, op, spy(getattr(torch.nn.functional, op)))
    with torch.no_grad():
        den(**denoiser_inputs(family, den, 1, 2))
    # the layer's own computation sees its weight upcast by diffusers' hook; between calls it is stored in fp8
    assert seen == {n: torch.float32 for n in cast}
    assert all(m.weight.dtype == torch.float8_e4m3fn for m in layers)
    assert den.dtype == torch.float32                          # what pipelines cast their latents to


def test_text_encoder_is_opt_in_and_keeps_its_fp32_layers():
    pipe, _ = _tiny("wan")
    assert set(enable_weight_storage(pipe)["models"]) == {"transformer"}
    disable_weight_storage(pipe, lossy=True)
    summary = enable_weight_storage(pipe, WeightStorageConfig(text_encoder=True))
    assert set(summary["models"]) == {"transformer", "text_encoder"}
    te = pipe.text_encoder
    assert te.encoder.block[0].layer[1].DenseReluDense.wi_0.weight.dtype == torch.float8_e4m3fn
    # UMT5 casts its hidden states to `wo`'s dtype (transformers keeps it in fp32): it must stay out of fp8
    assert te.encoder.block[0].layer[1].DenseReluDense.wo.weight.dtype == torch.float32
    assert te.shared.weight.dtype == torch.float32
    with torch.no_grad():
        embeds = pipe.encode_prompt("a red circle", do_classifier_free_guidance=False, max_sequence_length=16)[0]
    assert torch.isfinite(embeds).all()


# ------------------------------------------------------------------------------------- with features
@pytest.mark.parametrize("family,chunks", [("wan", dict(chunk_tokens=7)),
                                           ("animatediff", dict(chunk_frames=3, chunk_positions=37))])
def test_slicing_on_fp8_equals_fp8_unsliced(family, chunks, monkeypatch):
    from vidrt.engine.slicing import unet, wan

    calls = {"sliced": 0}
    target, attr = (wan, "sliced_block") if family == "wan" else (unet, "group_stats")
    original = getattr(target, attr)

    def counted(*a, **k):
        calls["sliced"] += 1
        return original(*a, **k)

    monkeypatch.setattr(target, attr, counted)
    pipe, den = _tiny(family)
    kw = denoiser_inputs(family, den, 2, 4)
    enable_weight_storage(pipe)
    with torch.no_grad():
        ref = den(**kw)[0]
        vidrt.enable_slicing(pipe, **chunks)
        out = den(**kw)[0]
        vidrt.disable_slicing(pipe)
        again = den(**kw)[0]
    assert calls["sliced"] > 0                                 # the sliced path ran, on fp8 layers
    assert (out - ref).abs().max().item() <= 1e-5              # measured 0 (wan), 7.2e-7 (animatediff), 1-4 threads
    assert torch.equal(again, ref)


def test_order_with_group_offloading():
    pipe, den = _tiny("wan")
    kw = denoiser_inputs("wan", den, 1, 2)
    enable_offload(pipe, OffloadConfig("group", "cpu"))
    with pytest.raises(VidrtError, match=r"weight storage: transformer streams its weights \(group offloading\); "
                                         r"call enable_weight_storage before enable_offload"):
        enable_weight_storage(pipe)
    assert not weight_storage_on(den) and cast_layers(den)[0] and den.blocks[0].attn1.to_q.weight.dtype == \
        torch.float32
    disable_offload(pipe)
    enable_weight_storage(pipe, KEEP)
    with torch.no_grad():
        ref = den(**kw)[0]
        enable_offload(pipe, OffloadConfig("group", "cpu"))   # the right order: stored, then streamed
        streamed = den(**kw)[0]
        with pytest.raises(VidrtError, match="call disable_offload before disable_weight_storage"):
            disable_weight_storage(pipe)
        disable_offload(pipe)
    assert torch.equal(streamed, ref)
    assert disable_weight_storage(pipe) == {"transformer": "restored"}


# ------------------------------------------------------------------------------------------- bad input
def test_bad_input_is_one_clear_line():
    with pytest.raises(VidrtError, match=r"^WeightStorageConfig.storage: expected one of fp8, fp8_e4m3fn, "
                                         r"fp8_e5m2, got 'int4'$"):
        WeightStorageConfig("int4")
    with pytest.raises(VidrtError, match=r"WeightStorageConfig.skip: '\(' is not a regular expression"):
        WeightStorageConfig(skip=("(",))
    pipe, den = _tiny("wan")
    enable_weight_storage(pipe)
    with pytest.raises(VidrtError, match=r"weight storage: already on for transformer; disable_weight_storage "
                                         r"first"):
        enable_weight_storage(pipe)
    _, other = _tiny("wan")
    other.to(torch.float64)
    with pytest.raises(VidrtError, match=r"weight storage: WanTransformer3DModel is in float64; load it in "
                                         r"float32, float16 or bfloat16"):
        enable_weight_storage(other)
    with pytest.raises(VidrtError, match="unsupported model class Linear"):
        enable_weight_storage(nn.Linear(2, 2))
