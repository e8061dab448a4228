"""Step policies: gate semantics, per-stream state, resets, AdaptiveSkip limits, slicing composition, stats."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import vidrt
from vidrt.models import get_adapter
from vidrt.engine import slicing
from vidrt.engine.policies import AdaptiveSkip, StepRehash, TaylorGate, disable_policy, enable_policy, policy_stats
from vidrt.engine.policies import policy_from_config
from vidrt.engine.policies.history import rel_error
from vidrt.engine.policies.trained import EarlyExit, LearnedInterpolation

STEPS = 8
N_LAYERS = 4
PROMPT = "a red circle moves right on a blue background"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def wan():
    return get_adapter("wan").tiny(0, num_layers=N_LAYERS)


def wan_kwargs(steps=STEPS, guidance=5.0, size=16):
    return dict(prompt=PROMPT, negative_prompt="", num_frames=5, height=size, width=size, num_inference_steps=steps,
                guidance_scale=guidance, output_type="latent")


def run(pipe, **kw):
    torch.manual_seed(0)
    return pipe(**kw, generator=torch.Generator().manual_seed(0)).frames


@pytest.fixture(scope="module")
def wan_full(wan):
    disable_policy(wan)
    return run(wan, **wan_kwargs())


def snapshot(pipe):
    den = pipe.transformer if hasattr(pipe, "transformer") else pipe.unet
    blocks = list(den.blocks) if hasattr(den, "blocks") else list(den.down_blocks) + list(den.up_blocks)
    return (type(den), dict(vars(den)).keys() - {"_diffusers_hook"}, [type(b) for b in blocks],
            [set(vars(b)) for b in blocks], "set_timesteps" in vars(pipe.scheduler))


# ---------------------------------------------------------------------------------------------------
def test_tau_zero_never_skips_and_is_exact(wan, wan_full):
    enable_policy(wan, TaylorGate(threshold=0.0, warmup=2))
    try:
        out = run(wan, **wan_kwargs())
        st = policy_stats(wan)
    finally:
        disable_policy(wan)
    assert torch.equal(out, wan_full)
    assert st["steps_total"] == STEPS and st["steps_full"] == STEPS and st["steps_skipped"] == 0
    assert st["blocks_evaluated"] == st["blocks_total"] == STEPS * 2 * N_LAYERS  # 2 CFG calls per step


def test_tau_inf_skips_every_step_after_warmup_but_the_last(wan, wan_full):
    warmup = 3
    enable_policy(wan, TaylorGate(threshold=math.inf, warmup=warmup, coast=0.0))   # every skipped step gated
    try:
        out = run(wan, **wan_kwargs())
        st = policy_stats(wan)
    finally:
        disable_policy(wan)
    assert st["skipped_steps"] == list(range(warmup, STEPS - 1))
    full = warmup + 1
    assert st["blocks_evaluated"] == 2 * (full * N_LAYERS + (STEPS - full) * 1)     # first block on skipped steps
    assert not torch.equal(out, wan_full)
    assert torch.isfinite(out).all()


def test_two_generations_in_a_row_are_identical(wan):
    for pol in (TaylorGate(threshold=0.3, warmup=2), [AdaptiveSkip(delta=0.5), StepRehash(threshold=0.5)]):
        enable_policy(wan, pol)
        try:
            a = run(wan, **wan_kwargs())
            sa = policy_stats(wan)
            b = run(wan, **wan_kwargs())
            sb = policy_stats(wan)
        finally:
            disable_policy(wan)
        assert torch.equal(a, b)
        assert sa == sb
        assert sa["steps_skipped"] > 0, sa  # the policy did something (else this test proves nothing)


def test_cfg_streams_keep_separate_histories(wan):
    """At the first gated step the cond call must get ITS OWN order-1 forecast 2*h1 - h0 (not uncond's)."""
    den = wan.transformer
    outs: list[torch.Tensor] = []
    hook = den.blocks[-1].register_forward_hook(lambda m, a, o: outs.append(o.detach().float().clone()))
    try:
        run(wan, **wan_kwargs())  # full: outputs cond0, uncond0, cond1, uncond1, ...
    finally:
        hook.remove()
    seen: list[torch.Tensor] = []
    hook = den.norm_out.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().float().clone()))
    enable_policy(wan, TaylorGate(threshold=math.inf, warmup=2, order=1, min_gap=1))
    try:
        run(wan, **wan_kwargs())
    finally:
        hook.remove()
        disable_policy(wan)
    c0, u0, c1, u1 = outs[:4]
    assert not torch.allclose(c1, u1, atol=1e-4)           # the two streams really differ
    own_c, own_u = 2 * c1 - c0, 2 * u1 - u0
    assert torch.allclose(seen[4], own_c, atol=1e-5)       # step 2, cond call
    assert torch.allclose(seen[5], own_u, atol=1e-5)       # step 2, uncond call
    assert not torch.allclose(seen[4], own_u, atol=1e-4)


def _taylor_run(pipe, **kw):
    gate = TaylorGate(**kw)
    enable_policy(pipe, gate)
    try:
        out = run(pipe, **wan_kwargs())
        return out, policy_stats(pipe), gate
    finally:
        disable_policy(pipe)


def test_coast_changes_cost_not_result(wan):
    """With the gate open anyway (tau=inf), coasting (no first block on the step after a confident skip) gives the
    bit-identical output and saves exactly that block on every other skipped step, never on two in a row."""
    out0, st0, _ = _taylor_run(wan, threshold=math.inf, warmup=2, max_skips=None, coast=0.0)
    out1, st1, _ = _taylor_run(wan, threshold=math.inf, warmup=2, max_skips=None, coast=1.0)
    assert torch.equal(out0, out1)
    skipped = list(range(2, STEPS - 1))
    assert st0["skipped_steps"] == st1["skipped_steps"] == skipped
    coasted = skipped[1::2]                                # the gate ran at 2, 4, 6; steps 3 and 5 coasted
    assert st0["coasted_calls"] == 0 and st1["coasted_calls"] == 2 * len(coasted)
    assert st1["blocks_evaluated"] == st0["blocks_evaluated"] - 2 * len(coasted)


def test_coast_only_after_a_confident_gate(wan):
    """A coasted call has no gate evaluation of its own, and the same stream's gate error one step before was
    below coast * tau; a gate error between coast * tau and tau skips without coasting."""
    _, _, probe = _taylor_run(wan, threshold=1e9, warmup=2, max_skips=None)    # (inf would not compute e_t)
    errs = sorted(e for _, _, e in probe.gate_errors)
    tau = errs[len(errs) // 2] * 1.01                      # about half the gated steps pass; coast = half of tau
    _, st, gate = _taylor_run(wan, threshold=tau, warmup=2, max_skips=None, coast=0.5)
    rec = {(s, k): e for s, k, e in gate.gate_errors}
    coasted = [(s, k) for s in range(2, STEPS - 1) for k in ("cond", "uncond") if (s, k) not in rec]
    assert len(coasted) == st["coasted_calls"] > 0
    for s, k in coasted:
        assert rec[(s - 1, k)] < 0.5 * tau
    assert any(0.5 * tau <= e < tau and (s + 1, k) in rec for (s, k), e in rec.items() if s + 1 < STEPS - 1)


def test_step_size_weights_the_gate(wan):
    """step_size = (t_k - t_next) / mean spacing (sums to the step count); the gate error is scaled by its power."""
    _, _, plain = _taylor_run(wan, threshold=1e9, warmup=2, max_skips=None, step_size_power=0.0)
    _, _, weighted = _taylor_run(wan, threshold=1e9, warmup=2, max_skips=None, step_size_power=1.0)
    ts = [float(t) for t in wan.scheduler.timesteps] + [0.0]
    size = [(ts[i] - ts[i + 1]) / (ts[0] / STEPS) for i in range(STEPS)]
    assert sum(size) == pytest.approx(STEPS)
    assert size[-2] > 1.5 * size[0]                         # shifted flow matching: longer steps near the end
    assert [(s, k) for s, k, _ in plain.gate_errors] == [(s, k) for s, k, _ in weighted.gate_errors]
    for (s, _, e0), (_, _, e1) in zip(plain.gate_errors, weighted.gate_errors):
        assert e0 > 0
        assert e1 == pytest.approx(e0 * size[s], rel=1e-6)


@pytest.mark.parametrize("make", [lambda: TaylorGate(threshold=math.inf, warmup=2), lambda: StepRehash(threshold=0.5),
                                  lambda: AdaptiveSkip(delta=0.5)])
def test_disable_frees_the_policy_state_at_once(wan, make):
    """On a GPU the state is up to ~1 GiB: detaching must free it without waiting for the cyclic collector."""
    import gc
    import weakref

    from vidrt.engine.policies import _controllers

    policy = make()
    enable_policy(wan, policy)
    gc.disable()
    try:
        run(wan, **wan_kwargs())
        held = policy.state_bytes()
        ctl = weakref.ref(_controllers(wan)[0])
        disable_policy(wan)
        assert held > 0 and policy.state_bytes() == 0
        assert ctl() is None
    finally:
        gc.enable()
        disable_policy(wan)


def test_taylor_history_min_gap():
    from vidrt.engine.policies.history import TaylorHistory

    h = TaylorHistory(max_order=1, min_gap=3)
    for step in range(5):
        h.update(torch.tensor([float(step) ** 2]), step)      # x = step^2
    # base at step 3 (3 - 0 >= 3): slope (9 - 0) / 3 = 3; step 4 refreshes the value only
    assert h.terms[0].item() == 16.0 and h.terms[1].item() == 3.0
    assert h.forecast(6).item() == 16.0 + 2 * 3.0
    plain = TaylorHistory(max_order=1, min_gap=1)
    for step in range(5):
        plain.update(torch.tensor([float(step) ** 2]), step)
    assert plain.terms[1].item() == 7.0                        # adjacent secant (16 - 9) / 1


def test_gate_error_is_per_batch_half():
    actual = torch.ones(4, 3)
    est = actual.clone()
    est[2:] += 1.0                                         # second half (cond) badly forecast
    assert rel_error(est, actual, halves=1) == pytest.approx(0.5)
    assert rel_error(est, actual, halves=2) == pytest.approx(1.0)


@pytest.mark.parametrize("cmax", [1, 2])
def test_adaptive_skip_limits(wan, cmax):
    steps = 12
    enable_policy(wan, AdaptiveSkip(delta=1e9, max_skips=cmax))  # the test always passes: only limits bind
    try:
        run(wan, **wan_kwargs(steps=steps))
        st = policy_stats(wan)
    finally:
        disable_policy(wan)
    skipped = st["skipped_steps"]
    assert skipped and min(skipped) >= 4
    run_len, longest = 0, 0
    for s in range(steps):
        run_len = run_len + 1 if s in skipped else 0
        longest = max(longest, run_len)
    assert longest == cmax
    assert st["blocks_evaluated"] == 2 * N_LAYERS * (steps - len(skipped))


def test_adaptive_skip_reuses_noise_prediction_but_scheduler_runs(wan, wan_full):
    enable_policy(wan, AdaptiveSkip(delta=0.0))   # exact-equality test never passes on real latents
    try:
        out = run(wan, **wan_kwargs())
        st = policy_stats(wan)
    finally:
        disable_policy(wan)
    assert st["steps_skipped"] == 0 and torch.equal(out, wan_full)


def test_step_rehash_key_steps(wan, wan_full):
    enable_policy(wan, StepRehash(threshold=0.0))
    try:
        out = run(wan, **wan_kwargs())
        st = policy_stats(wan)
    finally:
        disable_policy(wan)
    assert torch.equal(out, wan_full) and st["key_steps"] == list(range(STEPS))
    enable_policy(wan, StepRehash(threshold=math.inf, max_reuse=2, warmup=1))
    try:
        run(wan, **wan_kwargs())
        st = policy_stats(wan)
    finally:
        disable_policy(wan)
    keys = st["key_steps"]
    assert keys[0] == 0 and keys[-1] == STEPS - 1
    assert keys == [0, 3, 6, 7]                          # reuse capped at 2 in a row, last step full
    assert st["blocks_evaluated"] == 2 * (len(keys) * N_LAYERS + (STEPS - len(keys)) * 2)  # head + tail


def test_composes_with_slicing(wan, monkeypatch):
    """Slicing stays exact under a policy, in either enable order, and both undo cleanly."""
    sliced_calls = []                             # (tokens, chunk) of each block call that ran sliced
    sliced_block = slicing.wan.sliced_block

    def spy(block, hidden_states, encoder_hidden_states, temb, rotary_emb, chunk, *args, **kwargs):
        sliced_calls.append((hidden_states.shape[1], chunk))
        return sliced_block(block, hidden_states, encoder_hidden_states, temb, rotary_emb, chunk, *args, **kwargs)

    monkeypatch.setattr(slicing.wan, "sliced_block", spy)
    before = snapshot(wan)
    kw = wan_kwargs(size=32)                      # 8 tokens per frame pair: chunk_tokens=3 really chunks
    slicing.enable_slicing(wan, chunk_tokens=3, chunk_frames=1)
    try:
        sliced_plain = run(wan, **kw)
        enable_policy(wan, TaylorGate(threshold=0.0, warmup=2))   # policy active on every block, never skips
        sliced_calls.clear()
        sliced_tau0 = run(wan, **kw)
        st = policy_stats(wan)
    finally:
        disable_policy(wan)
        slicing.disable_slicing(wan)
    assert torch.equal(sliced_tau0, sliced_plain)  # the policy does not perturb the sliced computation
    assert sliced_calls == [(8, 3)] * st["blocks_evaluated"] and st["blocks_evaluated"] == STEPS * 2 * N_LAYERS
    enable_policy(wan, TaylorGate(threshold=0.3, warmup=2))
    try:
        plain = run(wan, **kw)
        st_plain = policy_stats(wan)
    finally:
        disable_policy(wan)
    for order in ("slicing-first", "policy-first"):
        if order == "slicing-first":
            slicing.enable_slicing(wan, chunk_tokens=3, chunk_frames=1)
            enable_policy(wan, TaylorGate(threshold=0.3, warmup=2))
        else:
            enable_policy(wan, TaylorGate(threshold=0.3, warmup=2))
            slicing.enable_slicing(wan, chunk_tokens=3, chunk_frames=1)
        try:
            assert slicing.slicing_state(wan) is not None
            sliced_calls.clear()
            sliced = run(wan, **kw)
            st = policy_stats(wan)
        finally:
            if order == "slicing-first":
                disable_policy(wan)
                slicing.disable_slicing(wan)
            else:
                slicing.disable_slicing(wan)
                disable_policy(wan)
        # same decisions; values differ only by slicing's float reordering (~1e-5 per forward), which the
        # order-1 forecast extrapolates over the skipped steps
        assert st == st_plain and st["steps_skipped"] > 0, order
        assert len(sliced_calls) == st["blocks_evaluated"], order   # every block the policy ran, ran sliced
        assert (sliced - plain).abs().max().item() <= 2e-4, order
    assert snapshot(wan) == before


# WanPipeline's cache_context gives the transformer a diffusers HookRegistry before any vidrt hook; when the
# policy's hook comes off, that registry stays but the instance `forward` it set must go (else a later patch of
# the class's forward would not reach this object).
def test_disable_policy_leaves_no_forward_attribute():
    pipe = get_adapter("wan").tiny(0, num_layers=1)
    den = pipe.transformer
    run(pipe, **wan_kwargs(steps=1))                  # diffusers' cache_context makes its registry
    assert "forward" not in vars(den)
    enable_policy(pipe, TaylorGate(threshold=0.0, warmup=1))
    try:
        run(pipe, **wan_kwargs(steps=1))
    finally:
        disable_policy(pipe)
    assert den.forward.__func__ is type(den).forward  # the same call either way
    assert "forward" not in vars(den)


def test_pipeline_built_without_vidrt_and_exact_restore(wan):
    from diffusers import WanPipeline

    pipe = WanPipeline(**wan.components)          # plain diffusers object
    den = pipe.transformer
    cls = type(den)
    keys = set(vars(den)) - {"_diffusers_hook"}   # diffusers' cache_context adds its registry itself
    fwd = den.forward
    pol = TaylorGate(threshold=math.inf, warmup=2)
    vidrt.enable_policy(pipe, pol)
    assert type(den).__name__ == cls.__name__ and isinstance(den, cls)
    try:
        run(pipe, **wan_kwargs(steps=4))
        st = vidrt.policy_stats(pipe)
    finally:
        vidrt.disable_policy(pipe)
    assert st["steps_total"] == 4 and st["skipped_steps"] == [2]
    assert type(den) is cls and set(vars(den)) - {"_diffusers_hook"} == keys
    assert "set_timesteps" not in vars(pipe.scheduler)
    assert den.forward == fwd and all(type(b).__call__ is torch.nn.Module.__call__ for b in den.blocks)
    # a bare denoiser also takes a policy (step from the timestep, stream from the call order)
    vidrt.enable_policy(den, TaylorGate(threshold=0.0, warmup=1))
    try:
        x = torch.randn(1, 16, 2, 4, 4)
        ctx = torch.randn(1, 16, 32)
        for t in (900.0, 500.0):
            den(hidden_states=x, timestep=torch.tensor([t]), encoder_hidden_states=ctx, return_dict=False)
        assert vidrt.policy_stats(den)["steps_total"] == 2
        den(hidden_states=x, timestep=torch.tensor([950.0]), encoder_hidden_states=ctx, return_dict=False)
        assert vidrt.policy_stats(den)["steps_total"] == 1        # timestep went up: a new generation
    finally:
        vidrt.disable_policy(den)
    # the same cache_context twice in a step (one call per context window) keeps two histories
    pol = TaylorGate(threshold=0.0, warmup=1)
    vidrt.enable_policy(den, pol, num_steps=2)
    try:
        for t in (900.0, 500.0):
            for window in (x, -x):
                with den.cache_context("cond"):
                    den(hidden_states=window, timestep=torch.tensor([t]), encoder_hidden_states=ctx, return_dict=False)
        assert set(pol._streams) == {"cond", "cond#1"}
        assert not torch.allclose(pol._streams["cond"].h.terms[0], pol._streams["cond#1"].h.terms[0])
    finally:
        vidrt.disable_policy(den)
    assert type(den) is cls


def test_stats_shape(wan):
    from diffusers import WanPipeline

    assert vidrt.policy_stats(WanPipeline(**get_adapter("wan").tiny(1, num_layers=1).components))["name"] == "none"
    enable_policy(wan, [AdaptiveSkip(), TaylorGate()])
    try:
        run(wan, **wan_kwargs(steps=3))
        st = policy_stats(wan)
    finally:
        disable_policy(wan)
    for key in ("steps_total", "steps_full", "steps_skipped", "blocks_total", "blocks_evaluated"):
        assert isinstance(st[key], int), key
    assert st["name"] == "adaptive+taylor_gate"
    assert st["steps_full"] + st["steps_skipped"] == st["steps_total"] == 3
    assert 0 <= st["blocks_evaluated"] <= st["blocks_total"] == 3 * 2 * N_LAYERS
    for v in st.values():
        assert isinstance(v, (int, float, str, list))
    assert policy_stats(wan) == st                     # still readable after disable_policy (runner sidecar)
    import json

    json.dumps(st, allow_nan=False)


def test_policy_from_config():
    assert policy_from_config({"policy": "none"}) is None
    p = policy_from_config({"policy": "taylor_gate", "threshold": 0.2, "warmup": 6})
    assert isinstance(p, TaylorGate) and p.threshold == 0.2 and p.warmup == 6
    ps = policy_from_config({"policy": ["adaptive", "taylor_gate"], "delta": 0.02, "taylor_gate": {"warmup": 4}})
    assert [type(x) for x in ps] == [AdaptiveSkip, TaylorGate] and ps[0].delta == 0.02 and ps[1].warmup == 4
    # YAML 1.1 reads 1e9 and inf as words (`--set acceleration.threshold=1e9`): numbers here
    assert policy_from_config({"policy": "taylor_gate", "threshold": "1e9"}).threshold == 1e9
    assert policy_from_config({"policy": "taylor_gate", "threshold": "inf"}).threshold == math.inf
    for bad, key in [({"policy": "taylor_gate", "threshold": "high"}, "acceleration.threshold"),
                     ({"policy": "adaptive", "max_skips": "inf"}, "acceleration.max_skips"),
                     ({"policy": "taylor_gate", "threshold": -1}, "acceleration.threshold"),
                     ({"policy": "nope"}, "acceleration.policy"),
                     ({"policy": "taylor_gate", "delta": 0.1}, "acceleration.delta"),
                     ({"policy": ["taylor_gate", "step_rehash"]}, "acceleration.policy"),
                     ({"policy": "adaptive", "max_skips": 1.5}, "acceleration.max_skips")]:
        with pytest.raises(vidrt.VidrtError) as exc:
            pol = policy_from_config(bad)
            enable_policy(get_adapter("wan").tiny(0, num_layers=2), pol)
        assert str(exc.value).startswith(key) and "\n" not in str(exc.value)
    for cls in (TaylorGate, StepRehash, AdaptiveSkip):
        cls()  # working defaults


# ---------------------------------------------------------------------------------------------------
# UNet families: same contract, deep branch = down_blocks[1:] + mid + up_blocks[:-1]
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["animatediff", "i2vgen-xl"])
def test_unet_families(family):
    from PIL import Image

    pipe = get_adapter(family).tiny(0)
    kw = dict(prompt="a red circle moves right", negative_prompt="", num_frames=2, height=16, width=16,
              num_inference_steps=6, guidance_scale=5.0, output_type="latent")
    if family == "i2vgen-xl":
        kw["image"] = Image.fromarray((np.random.RandomState(0).rand(32, 32, 3) * 255).astype("uint8"))
        kw["clip_skip"] = None
    before = snapshot(pipe)
    full = run(pipe, **kw)
    n_blocks = len(pipe.unet.down_blocks) + 1 + len(pipe.unet.up_blocks)
    enable_policy(pipe, TaylorGate(threshold=0.0, warmup=2))
    exact = run(pipe, **kw)
    enable_policy(pipe, TaylorGate(threshold=math.inf, warmup=2))
    skipped = run(pipe, **kw)
    st = policy_stats(pipe)
    enable_policy(pipe, TaylorGate(threshold=math.inf, warmup=2, coast=1.0))   # a UNet never coasts: skip
    coasting = run(pipe, **kw)                                                 # connections need down_blocks[0]
    st_c = policy_stats(pipe)
    enable_policy(pipe, StepRehash(threshold=math.inf, max_reuse=1, warmup=1))
    run(pipe, **kw)
    st_r = policy_stats(pipe)
    enable_policy(pipe, AdaptiveSkip(delta=1e9, max_skips=1))
    run(pipe, **kw)
    st_a = policy_stats(pipe)
    disable_policy(pipe)
    assert torch.equal(exact, full)
    assert st["skipped_steps"] == [2, 3, 4]
    assert st["blocks_evaluated"] == 3 * n_blocks + 3 * 2        # skipped steps run down_blocks[0] + up_blocks[-1]
    assert not torch.equal(skipped, full) and torch.isfinite(skipped).all()
    assert torch.equal(coasting, skipped) and st_c["blocks_evaluated"] == st["blocks_evaluated"]
    assert st_c["coasted_calls"] == 0
    assert st_r["key_steps"] == [0, 2, 4, 5]
    assert st_a["skipped_steps"] == [4] and st_a["blocks_evaluated"] == 5 * n_blocks   # batch of 2: one call/step
    assert snapshot(pipe) == before
    assert torch.equal(run(pipe, **kw), full)


# ---------------------------------------------------------------------------------------------------
# Trained slots with test doubles
# ---------------------------------------------------------------------------------------------------
class ConstantUncertainty:
    """ExitHead double: confident after block `at` only."""

    def __init__(self, at: int):
        self.at = at
        self.calls = 0

    def __call__(self, hidden, block_index, step, num_steps):
        self.calls += 1
        return 0.0 if block_index == self.at else 1.0


class HoldInterpolator:
    """StepInterpolator double: order-0 hold of the cached deep feature plus the early block's change."""

    def __init__(self):
        self.calls = []

    def __call__(self, feature, cached_deep, step, cached_step, num_steps):
        self.calls.append((step, cached_step))
        return cached_deep


def test_trained_slots_with_doubles(wan):
    head = ConstantUncertainty(at=1)
    enable_policy(wan, EarlyExit(head, threshold=0.5, warmup=2))
    try:
        run(wan, **wan_kwargs())
        st = policy_stats(wan)
    finally:
        disable_policy(wan)
    assert head.calls > 0
    assert st["skipped_steps"] == list(range(2, STEPS - 1))
    assert st["blocks_evaluated"] == 2 * (3 * N_LAYERS + (STEPS - 3) * 2)  # exits after block index 1
    interp = HoldInterpolator()
    enable_policy(wan, LearnedInterpolation(interp, at_block=0, every=2, warmup=2))
    try:
        run(wan, **wan_kwargs())
        st = policy_stats(wan)
    finally:
        disable_policy(wan)
    assert interp.calls and all(step - cached == 1 for step, cached in interp.calls)
    assert st["skipped_steps"] == [2, 4, 6]
