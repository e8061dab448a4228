"""OOM fallback: an injected allocation limit makes the unsliced denoiser fail; the fallback slices, halves
chunks until it fits, and the result equals the unconstrained run. Below the smallest chunk it gives up with
a clear message."""
from __future__ import annotations

import pytest
import torch

from vidrt.core.errors import VidrtError
from vidrt.models import get_adapter
from vidrt.engine.oom import OomFallbackConfig, disable_oom_fallback, enable_oom_fallback
from vidrt.engine.slicing import disable_slicing, enable_slicing, slicing_state
from vidrt_dev.oom import AllocationLimit


def wan_case():
    """A Wan twin whose FFN (1024 wide) dominates allocations, as in the real model."""
    from diffusers import WanTransformer3DModel

    pipe = get_adapter("wan").tiny(0)
    torch.manual_seed(0)
    pipe.transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=64, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=1024, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32).eval()
    g = torch.Generator().manual_seed(0)
    inputs = dict(hidden_states=torch.randn(2, 16, 3, 8, 8, generator=g), timestep=torch.tensor([500, 500]),
                  encoder_hidden_states=torch.randn(2, 16, 32, generator=g), return_dict=False)
    return pipe, pipe.transformer, inputs


def largest_allocation(den, inputs) -> int:
    sizes = []

    class Spy(AllocationLimit):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            inputs = {t.untyped_storage()._cdata for t in torch.utils._pytree.tree_flatten((args, kwargs))[0]
                      if isinstance(t, torch.Tensor)}
            for t in torch.utils._pytree.tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor) and t.untyped_storage()._cdata not in inputs:
                    sizes.append(t.untyped_storage().nbytes())
            return out

    with torch.no_grad(), Spy(0):
        den(**inputs)
    return max(sizes)


def test_oom_halves_chunks_and_recovers_exactly():
    pipe, den, inputs = wan_case()
    with torch.no_grad():
        reference = den(**inputs)[0]
    unsliced_max = largest_allocation(den, inputs)
    enable_slicing(pipe, chunk_tokens=8)
    sliced_max = largest_allocation(den, inputs)
    disable_slicing(pipe)
    assert sliced_max < unsliced_max
    limit = (sliced_max + unsliced_max) // 2
    with torch.no_grad(), AllocationLimit(limit):
        with pytest.raises(torch.OutOfMemoryError, match=f"injected limit: .* bytes > {limit}"):
            den(**inputs)
    enable_slicing(pipe, chunk_tokens=64)
    messages = []
    state = enable_oom_fallback(pipe, OomFallbackConfig(log=messages.append))
    with torch.no_grad(), AllocationLimit(limit) as lim:
        out = den(**inputs)[0]
    assert lim.refused >= 1 and state.retries and messages
    assert [r["chunk_tokens"] for r in state.retries] == sorted({r["chunk_tokens"] for r in state.retries}, reverse=True)
    assert slicing_state(den).config.chunk_tokens == state.retries[-1]["chunk_tokens"] < 64
    assert (out - reference).abs().max() <= 1e-5
    disable_oom_fallback(pipe)
    disable_slicing(pipe)


def test_oom_below_smallest_chunk_gives_up_clearly():
    pipe, den, inputs = wan_case()
    enable_oom_fallback(pipe)
    with torch.no_grad(), AllocationLimit(64):
        with pytest.raises(VidrtError, match="out of memory even with one frame/token/position per chunk"):
            den(**inputs)
    disable_oom_fallback(pipe)
    disable_slicing(pipe)


def test_oom_turns_slicing_on_first():
    pipe, den, inputs = wan_case()
    unsliced_max = largest_allocation(den, inputs)
    state = enable_oom_fallback(pipe)
    with torch.no_grad(), AllocationLimit(unsliced_max - 1):
        den(**inputs)
    assert slicing_state(den) is not None and state.retries
    disable_oom_fallback(pipe)
    disable_slicing(pipe)


def test_render_recovers_from_injected_oom(run_cli, tmp_path, monkeypatch):
    """End to end: the first denoiser call of a render (slicing off) runs out of memory; the fallback turns
    slicing on, retries, the video is written and the sidecar records the retry."""
    import json

    from diffusers.hooks import HookRegistry, ModelHook

    import vidrt.run.render as runner

    class FailOnce(ModelHook):
        failed = False

        def new_forward(self, module, *args, **kwargs):
            if not FailOnce.failed:
                FailOnce.failed = True
                raise torch.OutOfMemoryError("injected: CUDA out of memory")
            return self.fn_ref.original_forward(*args, **kwargs)

    real_enable = runner.enable_oom_fallback

    def enable_with_injection(pipe, config):
        HookRegistry.check_if_exists_or_initialize(pipe.transformer).register_hook(FailOnce(), "fail_once")
        return real_enable(pipe, config)

    monkeypatch.setattr(runner, "enable_oom_fallback", enable_with_injection)
    out = tmp_path / "x.mp4"
    result = run_cli("render", "samples/wan-random.yaml", "-o", out, "--set", "steps=2", "--set",
                     "memory.slicing=off", "--quiet")
    assert result.exit_code == 0, result.output
    side = json.loads(out.with_suffix(".json").read_text())
    assert FailOnce.failed and len(side["oom_retries"]) == 1, side["oom_retries"]
    assert side["memory"]["slicing"] == "off" and "out of memory" in result.stderr
