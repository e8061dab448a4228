"""vidrt.engine.kernels: the torch references equal diffusers' Wan block arithmetic bit for bit, and the Triton
kernels equal the references (on CPU under Triton's interpreter, on CUDA when there is one).

The Triton checks run in subprocesses (this file run as a script): TRITON_INTERPRET=1 must be set before the
kernels are jitted, and torch._inductor or another test may already have imported triton in the pytest process.
One subprocess runs every case under the interpreter with backend="triton" and backend="torch" on the same
inputs and saves both; the tests here compare them, and some against float64 math computed here. A second one,
in parallel and without the interpreter, compiles the kernels for sm_90 (no GPU needed) so the tests can check
the generated code. With a CUDA device the cases also run compiled, in a third.

Known interpreter limit (triton 3.9): fp32 -> bf16 stores truncate toward zero instead of rounding to nearest
even, so bf16 results are checked to one bf16 ulp (and exactly against truncated fp32 math); fp32 and fp16 are
checked as on a GPU.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

EPS = 1e-6
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
DTYPES = {"fp32": F32, "fp16": F16, "bf16": BF16}


# ----------------------------------------------------------------------------------------------- cases
# Each case builds its inputs from a fixed seed on the CPU, moves them to `device`, calls the kernel API with
# `backend`, and returns {"out": tensor, "inputs": {...}, "flags": {...}}. Same code, same inputs, in both
# processes.

def _randn(g, *shape, dtype=F32, device="cpu", mul=1.0, add=0.0):
    return (torch.randn(*shape, generator=g) * mul + add).to(dtype).to(device)


def _nm_plain(dtype, D, per_token, B=2, L=13, affine=False, inplace=False, seed=0):
    def build(api, backend, device):
        g = torch.Generator().manual_seed(seed)
        x = _randn(g, B, L, D, dtype=dtype, device=device, mul=2.0, add=0.5)
        m = L if per_token else 1
        shift = _randn(g, B, m, D, device=device)
        scale = _randn(g, B, m, D, device=device, mul=0.5)
        w = _randn(g, D, dtype=dtype, device=device, add=1.0) if affine else None
        b = _randn(g, D, dtype=dtype, device=device) if affine else None
        inputs = {"x": x.clone(), "shift": shift, "scale": scale, "weight": w, "bias": b}
        out = api.norm_modulate(x, shift, scale, eps=EPS, weight=w, bias=b, out=x if inplace else None,
                                backend=backend)
        return {"out": out, "inputs": inputs, "flags": {"returned_x": out is x} if inplace else {}}
    return build


def _wan_mods(g, B, L, D, per_token, s, e, device):
    """The six modulation terms as vidrt.slicing.wan._modulation makes them (strided views), cut to s:e."""
    table = _randn(g, 1, 6, D, device=device, mul=D ** -0.5)
    if per_token:
        temb = _randn(g, B, L, 6, D, device=device)
        mods = [m.squeeze(2) for m in (table.unsqueeze(0) + temb).chunk(6, dim=2)]
        return [m[:, s:e] for m in mods]
    return list((table + _randn(g, B, 6, D, device=device)).chunk(6, dim=1))


def _nm_wan_chunk(dtype, per_token, B=2, L=37, D=40, s=16, e=37, seed=1):
    """norm1 -> modulate on the chunk view hidden[:, s:e], written into a view of a sentinel-filled buffer."""
    def build(api, backend, device):
        g = torch.Generator().manual_seed(seed)
        hidden = _randn(g, B, L, D, dtype=dtype, device=device, mul=3.0)
        shift, scale = _wan_mods(g, B, L, D, per_token, s, e, device)[:2]
        buf = torch.full((B, L + 3, D), 7.0, dtype=dtype, device=device)  # other strides than hidden's
        view = buf[:, s + 3:e + 3]
        out = api.norm_modulate(hidden[:, s:e], shift, scale, eps=EPS, out=view, backend=backend)
        return {"out": buf, "inputs": {"x": hidden[:, s:e], "shift": shift, "scale": scale},
                "flags": {"returned_out": out is view}}
    return build


def _gr_plain(dtype, D, per_token, f_dtype=None, B=2, L=13, seed=2):
    def build(api, backend, device):
        g = torch.Generator().manual_seed(seed)
        x = _randn(g, B, L, D, dtype=dtype, device=device, mul=2.0)
        f = _randn(g, B, L, D, dtype=f_dtype or dtype, device=device)
        gate = _randn(g, B, L if per_token else 1, D, device=device)
        out = api.gate_residual(x, f, gate, backend=backend)
        return {"out": out, "inputs": {"x": x, "f": f, "gate": gate}, "flags": {}}
    return build


def _gr_wan_chunk(dtype, per_token, inplace, B=2, L=37, D=40, s=16, e=37, seed=3):
    """FFN gate -> residual of chunk s:e, in place into the residual stream (out=x) or into another buffer."""
    def build(api, backend, device):
        g = torch.Generator().manual_seed(seed)
        stream = _randn(g, B, L, D, dtype=dtype, device=device, mul=2.0)
        gate = _wan_mods(g, B, L, D, per_token, s, e, device)[5]
        f = _randn(g, B, e - s, D, dtype=dtype, device=device)
        x = stream[:, s:e]
        inputs = {"x": x.clone(), "f": f, "gate": gate}
        buf = stream if inplace else torch.full((B, L + 3, D), 7.0, dtype=dtype, device=device)
        view = x if inplace else buf[:, s + 3:e + 3]
        out = api.gate_residual(x, f, gate, out=view, backend=backend)
        return {"out": buf, "inputs": inputs, "flags": {"returned_out": out is view}}
    return build


def _gr_self_attn(dtype, B=2, L=9, D=24, seed=4):
    """The self-attention form: x = (xf + a * gate).type_as(x) with a in x's dtype."""
    def build(api, backend, device):
        g = torch.Generator().manual_seed(seed)
        x = _randn(g, B, L, D, dtype=dtype, device=device, mul=2.0)
        a = _randn(g, B, L, D, dtype=dtype, device=device)
        gate = _randn(g, B, 1, D, device=device)
        out = api.gate_residual(x, a, gate, backend=backend)
        same = torch.equal(out, (x.float() + a * gate).type_as(x))  # the reference is that form, bit for bit
        return {"out": out, "inputs": {"x": x, "f": a, "gate": gate},
                "flags": {"torch_equals_self_attn_form": same} if backend == "torch" else {}}
    return build


def _transposed(g, B, L, D, dtype, device, **kw):
    """A (B, L, D) view of (B, D, L) storage: the last dim is not contiguous."""
    return _randn(g, B, D, L, dtype=dtype, device=device, **kw).transpose(1, 2)


def _nm_transposed(dtype, B=2, L=6, D=24, seed=5):
    def build(api, backend, device):
        g = torch.Generator().manual_seed(seed)
        x = _transposed(g, B, L, D, dtype, device, mul=2.0)
        shift, scale = _transposed(g, B, L, D, F32, device), _transposed(g, B, 1, D, F32, device)
        out = torch.empty(B, D, L + 2, dtype=dtype, device=device)[:, :, 1:L + 1].transpose(1, 2)  # not x's strides
        res = api.norm_modulate(x, shift, scale, eps=EPS, out=out, backend=backend)
        return {"out": out, "inputs": {"x": x, "shift": shift, "scale": scale}, "flags": {"returned_out": res is out}}
    return build


def _gr_transposed(dtype, B=2, L=6, D=24, seed=6):
    def build(api, backend, device):
        g = torch.Generator().manual_seed(seed)
        x, f = _transposed(g, B, L, D, dtype, device), _transposed(g, B, L, D, F32, device)
        gate = _transposed(g, B, L, D, F32, device)
        out = api.gate_residual(x, f, gate, backend=backend)
        return {"out": out, "inputs": {"x": x, "f": f, "gate": gate}, "flags": {}}
    return build


CASES = {}
for _n, _dt in DTYPES.items():
    CASES[f"nm-{_n}-per_sample-D24"] = _nm_plain(_dt, 24, per_token=False)
    CASES[f"nm-{_n}-per_token-D40"] = _nm_plain(_dt, 40, per_token=True, L=11)
    CASES[f"nm-{_n}-affine-D24"] = _nm_plain(_dt, 24, per_token=False, affine=True, L=7)
    CASES[f"gr-{_n}-per_sample-D24"] = _gr_plain(_dt, 24, per_token=False)
    CASES[f"gr-{_n}-per_token-D40-f32"] = _gr_plain(_dt, 40, per_token=True, f_dtype=F32, L=11)
for _n, _dt in (("fp32", F32), ("bf16", BF16)):
    for _pt in (False, True):
        _m = "per_token" if _pt else "per_sample"
        CASES[f"nm-{_n}-wan_chunk-{_m}"] = _nm_wan_chunk(_dt, _pt)
        CASES[f"gr-{_n}-wan_chunk-{_m}-inplace"] = _gr_wan_chunk(_dt, _pt, inplace=True)
    CASES[f"gr-{_n}-wan_chunk-per_sample-out"] = _gr_wan_chunk(_dt, False, inplace=False)
CASES["nm-fp16-inplace-D24"] = _nm_plain(F16, 24, per_token=True, inplace=True, L=5)
CASES["nm-fp16-per_sample-D1000"] = _nm_plain(F16, 1000, per_token=False, B=1, L=5)  # 4 rows/program
CASES["gr-fp32-per_sample-D1500"] = _gr_plain(F32, 1500, per_token=False, B=1, L=5)  # 2 column tiles
CASES["nm-fp32-transposed"] = _nm_transposed(F32)
CASES["gr-fp16-transposed"] = _gr_transposed(F16)
CASES["gr-bf16-self_attn"] = _gr_self_attn(BF16)
CASES["gr-fp16-self_attn"] = _gr_self_attn(F16)


def _case_dtype(name: str) -> torch.dtype:
    return DTYPES[name.split("-")[1]]


# ----------------------------------------------------------------------------------------------- runner

def _run_all(device: str, path: str) -> None:
    """Script entry: every case with both backends; saved for the pytest process."""
    import vidrt.engine.kernels as api

    t0 = time.perf_counter()
    results = {"interpreted": sys.modules["vidrt.engine.kernels.triton_kernels"].INTERPRETED
               if api.triton_available(device) else None, "cases": {}}
    for name, build in CASES.items():
        try:
            tri = build(api, "triton", device)
            ref = build(api, "torch", device)
            entry = {"triton": tri["out"].cpu(), "torch": ref["out"].cpu(),
                     "flags_triton": tri["flags"], "flags_torch": ref["flags"]}
        except Exception as exc:  # reported per case by the tests
            entry = {"error": f"{type(exc).__name__}: {exc}"}
        results["cases"][name] = entry
    results["seconds"] = time.perf_counter() - t0
    torch.save(results, path)


def _compile_facts() -> dict:
    """Compile both kernels for an H100/H200 (sm_90) as the launchers would, without a GPU (Triton ships
    ptxas), and record what the generated code does. Needs a process where the interpreter never ran (with
    triton 3.9, compiling after interpreted launches fails inside triton.language)."""
    import re

    import triton
    from triton.backends.compiler import GPUTarget

    import vidrt.engine.kernels.triton_kernels as tk

    try:
        from triton.compiler import ASTSource
    except ImportError as exc:
        return {"api_error": f"triton {triton.__version__} AOT API differs: {exc}"}
    facts = {}
    for dt in ("fp32", "bf16"):
        ptr = "*" + dt
        jobs = {"nm": (tk._norm_modulate_kernel, [ptr, "*fp32", "*fp32", ptr, ptr, ptr, "i32", "i32", "i32", "fp32"]
                       + ["i32"] * 14, {"HAS_W": True, "HAS_B": True, "ROWS": 1, "BLOCK_D": 2048}),
                "gr": (tk._gate_residual_kernel, [ptr, ptr, "*fp32", ptr, "i32", "i32", "i32"] + ["i32"] * 12,
                       {"ROWS": 4, "BLOCK_D": 1024})}
        for kind, (kernel, types, consts) in jobs.items():
            try:
                src = ASTSource(kernel, dict(zip(kernel.arg_names, types + ["constexpr"] * len(consts))),
                                constexprs=consts)
            except (TypeError, AttributeError) as exc:
                return {"api_error": f"triton {triton.__version__} AOT API differs: {exc!r}"}
            try:
                compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                                          options={"num_warps": 8, **tk.COMPILE_OPTIONS})
            except Exception as exc:  # a kernel that does not compile for the GPU: the test fails with this
                return {"compile_error": f"{kind}-{dt}: {type(exc).__name__}: {exc}"}
            ptx = compiled.asm["ptx"]
            facts[f"{kind}-{dt}"] = {"cubin": len(compiled.asm.get("cubin", b"")) > 0,
                                     "fma": "fma." in ptx, "approx": bool(re.search(r"\.(approx|full)\.", ptx)),
                                     "bf16_rne": "cvt.rn.bf16" in ptx}
    return facts


def _spawn(tmp_path_factory, args: list, interpret: bool):
    """Start this file as a script (with the exact vidrt the tests import); returns (process, results path)."""
    import vidrt

    tmp = tmp_path_factory.mktemp("kernels")
    path = tmp / "results.pt"
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp / "triton-cache"), PYTHONPATH=os.pathsep.join(
        [str(Path(vidrt.__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))
    env.pop("TRITON_INTERPRET", None)
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    proc = subprocess.Popen([sys.executable, __file__, *args, str(path)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    return proc, path


def _collect(proc, path) -> dict:
    try:
        out, err = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    if proc.returncode != 0 or not path.exists():
        pytest.fail(f"kernel subprocess failed (rc {proc.returncode}):\n{out[-3000:]}\n{err[-6000:]}")
    return torch.load(path)


def _require_triton():
    if importlib.util.find_spec("triton") is None:
        if os.environ.get("VIDRT_REQUIRE_TRITON") == "1":
            pytest.fail("triton is not installed but VIDRT_REQUIRE_TRITON=1")
        pytest.skip("triton is not installed (pip install triton; CI sets VIDRT_REQUIRE_TRITON=1)")


@pytest.fixture(scope="module")
def triton_runs(tmp_path_factory):
    """Two CPU subprocesses at once: the cases under the interpreter, and the sm_90 compile."""
    _require_triton()
    runs = {"interp": _spawn(tmp_path_factory, ["run", "cpu"], interpret=True),
            "compile": _spawn(tmp_path_factory, ["compile"], interpret=False)}
    try:
        return {name: _collect(*run) for name, run in runs.items()}
    finally:
        for proc, _ in runs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


@pytest.fixture(scope="module")
def interp(triton_runs):
    res = triton_runs["interp"]
    assert res["interpreted"] is True, "the subprocess did not run the kernels under Triton's interpreter"
    return res


@pytest.fixture(scope="module")
def cuda(tmp_path_factory):
    _require_triton()
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    res = _collect(*_spawn(tmp_path_factory, ["run", "cuda"], interpret=False))
    assert res["interpreted"] is False
    return res


# ----------------------------------------------------------------------------------------------- helpers

def _bf16_truncate(t: torch.Tensor) -> torch.Tensor:
    """fp32 -> bf16 rounding toward zero, as Triton's interpreter stores bf16."""
    return (t.float().contiguous().view(torch.int32) & -65536).view(torch.float32).to(BF16)


def _check_case(res: dict, name: str, exact_gate: bool) -> None:
    entry = res["cases"][name]
    assert "error" not in entry, entry.get("error")
    got, want = entry["triton"], entry["torch"]
    dtype = _case_dtype(name)
    assert got.dtype == want.dtype == dtype and got.shape == want.shape
    for flags in (entry["flags_triton"], entry["flags_torch"]):
        assert all(flags.values()), flags
    if name.startswith("gr-") and exact_gate and dtype != BF16:
        assert torch.equal(got, want)  # same two fp32 roundings, same cast
    else:
        tol = 1e-5 if dtype == F32 else torch.finfo(dtype).eps  # fp32 ~ulps; fp16/bf16: one ulp
        torch.testing.assert_close(got.float(), want.float(), atol=1e-5, rtol=tol)


# ----------------------------------------------------------------------------------------------- (a) references

@pytest.mark.parametrize("dtype", [F32, F16, BF16])
@pytest.mark.parametrize("per_token", [False, True])
@pytest.mark.parametrize("affine", [False, True])
def test_reference_is_fp32_layernorm_modulation(dtype, per_token, affine):
    from diffusers.models.normalization import FP32LayerNorm

    from vidrt.engine.kernels import norm_modulate, norm_modulate_reference

    g = torch.Generator().manual_seed(0)
    B, L, D = 2, 9, 40
    x = _randn(g, B, L, D, dtype=dtype, mul=2.0)
    shift = _randn(g, B, L if per_token else 1, D)
    scale = _randn(g, B, L if per_token else 1, D)
    norm = FP32LayerNorm(D, eps=EPS, elementwise_affine=affine).to(dtype)
    if affine:
        with torch.no_grad():
            norm.weight.copy_(_randn(g, D, add=1.0))
            norm.bias.copy_(_randn(g, D))
    with torch.no_grad():
        expected = (norm(x.float()) * (1 + scale) + shift).type_as(x)
        kw = dict(eps=norm.eps, weight=norm.weight, bias=norm.bias)
        assert torch.equal(norm_modulate_reference(x, shift, scale, **kw), expected)
        assert torch.equal(norm_modulate(x, shift, scale, **kw), expected)  # auto on CPU: the reference
        out = torch.empty_like(x)
        assert norm_modulate(x, shift, scale, out=out, backend="torch", **kw) is out and torch.equal(out, expected)


@pytest.mark.parametrize("dtype", [F32, BF16])
@pytest.mark.parametrize("per_token", [False, True])
def test_references_reproduce_wan_block_forward(dtype, per_token):
    """Capture what a real diffusers WanTransformerBlock feeds its attn1/attn2/ffn and returns, then rebuild it
    with the references: every intermediate and the output are bit-identical."""
    from diffusers.models.transformers.transformer_wan import WanTransformerBlock

    from vidrt.engine.kernels import gate_residual, gate_residual_reference, norm_modulate_reference

    torch.manual_seed(0)
    B, L, D, T = 2, 10, 32, 5
    block = WanTransformerBlock(D, ffn_dim=48, num_heads=2, cross_attn_norm=True).to(dtype).eval()
    with torch.no_grad():
        block.norm2.weight.normal_(1.0, 0.2)
        block.norm2.bias.normal_()
    seen = {}

    def grab(name):
        def hook(module, args, output):
            seen[name] = (args[0], output)
        return hook

    for name in ("attn1", "attn2", "ffn"):
        getattr(block, name).register_forward_hook(grab(name))
    x = torch.randn(B, L, D).to(dtype)
    ctx = torch.randn(B, T, D).to(dtype)
    temb = torch.randn(B, L, 6, D) if per_token else torch.randn(B, 6, D)
    with torch.no_grad():
        out = block(x, ctx, temb.to(dtype), None)
        if per_token:
            mods = [m.squeeze(2) for m in (block.scale_shift_table.unsqueeze(0) + temb.to(dtype).float()).chunk(6, 2)]
        else:
            mods = (block.scale_shift_table + temb.to(dtype).float()).chunk(6, dim=1)
        shift, scale, gate, c_shift, c_scale, c_gate = mods
        eps = block.norm1.eps

        assert torch.equal(norm_modulate_reference(x, shift, scale, eps=eps), seen["attn1"][0])
        h1 = gate_residual_reference(x, seen["attn1"][1], gate)
        n2 = norm_modulate_reference(h1, torch.zeros(1, 1, D), torch.zeros(1, 1, D), eps=block.norm2.eps,
                                     weight=block.norm2.weight, bias=block.norm2.bias)  # norm2: affine, unmodulated
        assert torch.equal(n2, seen["attn2"][0])
        h2 = h1 + seen["attn2"][1]
        assert torch.equal(norm_modulate_reference(h2, c_shift, c_scale, eps=block.norm3.eps), seen["ffn"][0])
        assert torch.equal(gate_residual_reference(h2, seen["ffn"][1], c_gate), out)
        assert torch.equal(gate_residual(h2, seen["ffn"][1], c_gate), out)  # auto on CPU


def test_auto_on_cpu_never_takes_triton(monkeypatch):
    import vidrt.engine.kernels as api

    def boom():
        raise AssertionError("auto must not load the Triton kernels for CPU tensors")

    monkeypatch.setattr(api, "_kernels", boom)
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # even under the interpreter: auto means CUDA only
    x, s = torch.randn(1, 4, 8), torch.randn(1, 1, 8)
    assert torch.equal(api.norm_modulate(x, s, s, eps=EPS), api.norm_modulate_reference(x, s, s, eps=EPS))
    assert torch.equal(api.gate_residual(x, x, s), api.gate_residual_reference(x, x, s))


def test_torch_backend_in_place_and_argument_errors():
    import vidrt.engine.kernels as api

    x, f, gate = torch.randn(2, 5, 8, dtype=BF16), torch.randn(2, 5, 8, dtype=BF16), torch.randn(2, 1, 8)
    expected = api.gate_residual_reference(x, f, gate)
    assert api.gate_residual(x, f, gate, out=x, backend="torch") is x and torch.equal(x, expected)
    with pytest.raises(ValueError, match="backend"):
        api.gate_residual(x, f, gate, backend="cuda")
    with pytest.raises(ValueError, match="out must be"):
        api.gate_residual(x, f, gate, out=torch.empty(2, 5, 8))  # fp32 out for a bf16 x


def test_forced_triton_without_interpreter_on_cpu_raises(monkeypatch):
    import vidrt.engine.kernels as api

    mod = sys.modules.get("vidrt.engine.kernels.triton_kernels")
    if mod is not None and mod.INTERPRETED:
        pytest.skip("kernels already imported under the interpreter in this process")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x, s = torch.randn(1, 4, 8), torch.randn(1, 1, 8)
    assert not api.triton_available("cpu")
    with pytest.raises(RuntimeError, match="backend='triton' unavailable"):
        api.norm_modulate(x, s, s, eps=EPS, backend="triton")


def test_support_declines_what_the_kernels_do_not_compute():
    from vidrt.engine.kernels import support

    x, s = torch.randn(2, 4, 8, dtype=BF16), torch.randn(2, 1, 8)
    assert support.norm_modulate_unsupported(x, s, s, None, None, None) is None
    assert "fp32" in support.norm_modulate_unsupported(x, s, s.bfloat16(), None, None, None)
    assert "broadcast" in support.norm_modulate_unsupported(x, torch.randn(3, 1, 8), s, None, None, None)
    assert "(B, L, D)" in support.norm_modulate_unsupported(x[0], s[0], s[0], None, None, None)
    assert "weight" in support.norm_modulate_unsupported(x, s, s, torch.ones(4), None, None)
    assert "stride 0" in support.gate_residual_unsupported(x, x, s, x[:, :1].expand(2, 4, 8))
    assert "f must" in support.gate_residual_unsupported(x, x[:, :1], s, None)
    with torch.enable_grad():
        assert "autograd" in support.gate_residual_unsupported(x, x, s.requires_grad_(), None)


# ----------------------------------------------------------------------------------------------- (b) Triton

@pytest.mark.parametrize("name", list(CASES))
def test_triton_interpreter_matches_reference(interp, name):
    _check_case(interp, name, exact_gate=True)


def test_triton_cuda_matches_reference(cuda):
    """The same cases compiled for the GPU (skipped without one): fp32 to ~ulps, fp16/bf16 to one ulp."""
    failures = {}
    for name in CASES:
        try:
            _check_case(cuda, name, exact_gate=False)
        except AssertionError as exc:
            failures[name] = str(exc)[:300]
    assert not failures, failures


def test_triton_kernels_compile_for_sm90(triton_runs):
    """The real GPU path, compiled without a GPU: it builds, contracts no mul+add into an FMA (so gate_residual
    rounds exactly as torch's separate ops), uses IEEE div/sqrt, and stores bf16 rounding to nearest even."""
    facts = triton_runs["compile"]
    if "api_error" in facts:
        pytest.skip(facts["api_error"])
    assert "compile_error" not in facts, facts["compile_error"]
    assert set(facts) == {"nm-fp32", "gr-fp32", "nm-bf16", "gr-bf16"}
    for name, f in facts.items():
        assert f["cubin"] and not f["fma"] and not f["approx"], (name, f)
        assert f["bf16_rne"] == name.endswith("bf16"), (name, f)


def test_triton_required_in_ci():
    if os.environ.get("VIDRT_REQUIRE_TRITON") != "1":
        pytest.skip("set VIDRT_REQUIRE_TRITON=1 to require triton")
    assert importlib.util.find_spec("triton") is not None, "VIDRT_REQUIRE_TRITON=1 but triton is not installed"


# ----------------------------------------------------------------------------------------------- (c) independent

def test_triton_norm_modulate_against_float64_math(interp):
    """Independently of torch's layer_norm: float64 mean/var/modulation from the same inputs; and the check is
    sharp enough to catch a per-sample/per-token mix-up or a shift off by 1e-3."""
    import vidrt.engine.kernels as api

    name = "nm-fp32-per_token-D40"
    got = interp["cases"][name]["triton"].double()
    inp = CASES[name](api, "torch", "cpu")["inputs"]
    x, shift, scale = (inp[k].double() for k in ("x", "shift", "scale"))
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    want = (x - mean) / torch.sqrt(var + EPS) * (1 + scale) + shift
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    wrong = [(x - mean) / torch.sqrt(var + EPS) * (1 + scale[:, :1]) + shift[:, :1], want + 1e-3]
    for w in wrong:
        assert not torch.allclose(got, w, atol=1e-5, rtol=1e-5)


def test_triton_gate_residual_bf16_is_fp32_math_truncated(interp):
    """bf16 under the interpreter: exactly the fp32 formula with the interpreter's truncating store (or, should a
    later interpreter round like GPUs do, with round-to-nearest-even)."""
    import vidrt.engine.kernels as api

    for name in ("gr-bf16-per_sample-D24", "gr-bf16-per_token-D40-f32", "gr-bf16-self_attn"):
        inp = CASES[name](api, "torch", "cpu")["inputs"]
        fp32 = inp["x"].float() + inp["f"].float() * inp["gate"]  # the two fp32 roundings the kernel does
        got = interp["cases"][name]["triton"]
        assert torch.equal(got, _bf16_truncate(fp32)) or torch.equal(got, fp32.to(BF16))
        assert not torch.equal(got, (fp32 + 0.05).to(BF16))  # the comparison can fail


if __name__ == "__main__":  # the subprocesses: `run DEVICE RESULTS_PATH` or `compile RESULTS_PATH`
    if sys.argv[1] == "run":
        _run_all(sys.argv[2], sys.argv[3])
    else:
        torch.save(_compile_facts(), sys.argv[2])
