"""The time model's pieces: op counting (vidrt.memory.cost), the GPU table (vidrt.memory.devices), seconds from
counts (vidrt.memory.timemodel) and the fitted constants in bench/results/time_model.json."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from vidrt.memory.cost import CostCounter, Counts
from vidrt.memory.devices import GPUS, device_from_torch, get_device, match_device_name, pcie_gbs
from vidrt.memory.timemodel import Efficiency, load_efficiency, predict_seconds, rollup

ROOT = Path(__file__).resolve().parents[1]


def count(fn, host_devices=("meta",)) -> Counts:
    with FakeTensorMode(allow_non_fake_inputs=True), torch.no_grad():
        with CostCounter(host_devices=host_devices) as cc:
            fn()
    return cc.counts


def ops(c: Counts, section: str = "") -> list[list]:
    return list(c.ops.get(section, {}).values())


# ------------------------------------------------------------------------------------------------ counting
def test_matmul_flops_and_bytes_match_closed_form():
    m, k, n = 64, 128, 32
    c = count(lambda: torch.randn(m, k, dtype=torch.bfloat16) @ torch.randn(k, n, dtype=torch.bfloat16))
    (mm,) = [r for r in ops(c) if r[0] == "matmul"]
    assert mm[2] == 2 * m * k * n
    assert mm[3] == 2 * (m * k + k * n + m * n)          # bf16: read A and B, write C
    assert mm[4] == "bfloat16"
    b = 3
    c = count(lambda: torch.bmm(torch.randn(b, m, k), torch.randn(b, k, n)))
    assert c.totals()["matmul"]["flops"] == 2 * b * m * k * n


def test_linear_counts_as_one_addmm():
    lin = None

    def run():
        nonlocal lin
        lin = torch.nn.Linear(16, 8)
        lin(torch.randn(4, 5, 16))
    c = count(run)
    t = c.totals()
    assert t["matmul"]["flops"] == 2 * 20 * 16 * 8
    assert t["matmul"]["launches"] == 1


def test_conv_flops_match_closed_form():
    n, cin, cout, h, w, kh, kw = 2, 3, 8, 10, 12, 3, 3
    c = count(lambda: torch.nn.functional.conv2d(torch.randn(n, cin, h, w), torch.randn(cout, cin, kh, kw),
                                                 padding=1))
    assert c.totals()["matmul"]["flops"] == 2 * n * cout * h * w * cin * kh * kw
    c3 = count(lambda: torch.nn.functional.conv3d(torch.randn(1, 4, 5, 6, 7), torch.randn(2, 4, 3, 3, 3)))
    assert c3.totals()["matmul"]["flops"] == 2 * 2 * (3 * 4 * 5) * 4 * 27


def test_sdpa_flops_match_closed_form():
    b, h, lq, lk, d = 1, 4, 128, 96, 32
    q = lambda: torch.randn(b, h, lq, d, dtype=torch.bfloat16)  # noqa: E731
    kv = lambda: torch.randn(b, h, lk, d, dtype=torch.bfloat16)  # noqa: E731
    c = count(lambda: torch.nn.functional.scaled_dot_product_attention(q(), kv(), kv()))
    t = c.totals()
    assert t["attention"]["flops"] == 4 * b * h * lq * lk * d      # QK^T and PV, 2 flops per multiply-add
    assert t["attention"]["launches"] == 1
    assert t["matmul"]["flops"] == 0


def test_views_cost_nothing_and_elementwise_bytes_are_inputs_plus_outputs():
    def run():
        x = torch.randn(4, 6, 8)
        y = x.view(24, 8).t().unsqueeze(0).expand(3, 8, 24)
        x.transpose(0, 1).permute(2, 0, 1)[1:, :2].detach().squeeze()
        x.reshape(4, 48)
        x.unflatten(-1, (2, 4)).unbind(0)
        return y
    c = count(run)
    t = c.totals()
    assert t["elementwise"]["launches"] == 1            # the randn only
    c = count(lambda: torch.randn(4, 6) + torch.randn(4, 6))
    (add,) = [r for sig, r in c.ops[""].items() if sig.startswith("add.")]
    assert add[3] == 3 * 24 * 4 and add[2] == 0 and add[0] == "elementwise"


def test_sliced_toy_keeps_flops_and_adds_launches():
    w1, w2 = torch.randn(64, 256), torch.randn(256, 64)

    def mlp(x):
        return torch.relu(x @ w1) @ w2

    def whole():
        mlp(torch.randn(1024, 64))

    def chunked():
        x = torch.randn(1024, 64)
        out = torch.empty(1024, 64)
        for s in range(0, 1024, 128):
            out[s:s + 128] = mlp(x[s:s + 128])
    a, b = count(whole).totals(), count(chunked).totals()
    assert a["matmul"]["flops"] == b["matmul"]["flops"] == 2 * 2 * 1024 * 64 * 256
    launches = lambda t: sum(t[c]["launches"] for c in ("matmul", "attention", "elementwise"))  # noqa: E731
    assert launches(b) > 4 * launches(a)


def test_sections_nest_and_module_hooks_record_into_them():
    lin = torch.nn.Linear(8, 8)

    def run():
        with FakeTensorMode(allow_non_fake_inputs=True), torch.no_grad():
            m = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU())
            with CostCounter() as cc:
                cc.hook_module(m[0], "lin")
                with cc.section("stage"):
                    m(torch.randn(2, 8))
                    with cc.section("inner"):
                        torch.randn(3) * 2
        return cc.counts
    del lin
    c = run()
    assert set(c.sections()) == {"stage", "stage/lin", "stage/inner"}
    assert c.totals("stage/lin")["matmul"]["launches"] == 1
    assert c.totals("stage")["matmul"]["launches"] == 1                 # subsections included
    assert c.select("stage").sections() == ["stage", "stage/inner", "stage/lin"]


def test_device_changes_are_transfers_and_host_ops_are_host():
    def run():
        x = torch.randn(1000)
        y = x.to("meta")          # the simulator's host
        y * 2                     # an op on the host side
        return y
    c = count(run)
    assert c.transfers[""]["d2h"] == [4000.0, 1.0]
    t = c.totals()
    assert t["host"]["launches"] == 1 and t["transfer"] == {"d2h": 4000.0}
    assert t["elementwise"]["launches"] == 1   # the randn


def test_rms_norm_counts_as_one_fused_op():
    def run():
        m = torch.nn.RMSNorm(64, dtype=torch.bfloat16)
        m(torch.randn(2, 10, 64, dtype=torch.bfloat16))
    c = count(run)
    fused = [sig for sig in c.ops[""] if sig.startswith("rms_norm(fused)")]
    assert len(fused) == 1                              # one op, not the 8 pieces the CPU decomposes it into
    assert not [sig for sig in c.ops[""] if sig.split(".")[0] in ("pow", "mean", "rsqrt", "_to_copy")]


def test_counts_algebra_and_json_roundtrip():
    c = Counts()
    c.add_op("a", "mm|x", "matmul", 10, 4, 2, "bfloat16")
    c.add_op("a/b", "add|x", "elementwise", 0, 8, 3, "float32")
    c.add_transfer("a", 100, "weights", 2)
    c.serial.add("a/b")
    d = (c + c.scaled(2, prefix="a/b")).renamed("run")
    assert d.ops["run/a"]["mm|x"][1] == 4
    assert d.ops["run/a/b"]["add|x"][1] == 3 + 6
    assert d.transfers["run/a"]["weights"] == [200.0, 4.0]
    assert d.serial == {"run/a/b"}
    e = Counts.from_dict(json.loads(json.dumps(d.to_dict())))
    assert e.ops == d.ops and e.transfers == d.transfers and e.serial == d.serial


def test_counter_overhead_on_a_tiny_model_is_small():
    """Counting a forward should cost about as much as the fake forward itself (CI noise tolerated)."""
    import time

    def forward(counted: bool) -> float:
        with FakeTensorMode(allow_non_fake_inputs=True), torch.no_grad():
            m = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU(),
                                                          torch.nn.LayerNorm(64)) for _ in range(20)])
            x = torch.randn(8, 64)
            m(x)
            t0 = time.perf_counter()
            for _ in range(3):
                if counted:
                    with CostCounter():
                        m(x)
                else:
                    m(x)
            return time.perf_counter() - t0
    plain = min(forward(False) for _ in range(2))
    counted = min(forward(True) for _ in range(2))
    assert counted < 4 * plain + 0.05


# ------------------------------------------------------------------------------------------------ devices
def test_device_table_is_consistent():
    ids = [g.id for g in GPUS]
    assert len(ids) == len(set(ids)) >= 12
    for want in ("rtx3060", "rtx4060ti", "rtx4070", "rtx4080", "rtx4090", "rtx5090", "a100-40g", "a100-80g",
                 "l4", "l40s", "h100", "h200"):
        assert want in ids
    for g in GPUS:
        assert get_device(g.id) is g
        for alias in g.aliases:
            assert get_device(alias) is g
            assert get_device(alias.upper()) is g
        assert g.bf16_tflops > 0 and g.fp16_tflops > 0 and g.fp32_tflops > 0 and g.mem_gbs > 0
        assert g.fp32_tflops < g.bf16_tflops            # tensor cores beat CUDA cores
        assert g.host_gbs == pcie_gbs(g.pcie_gen, g.pcie_lanes) > 0
        assert g.source
        size = re.search(r"(\d+)\s*GB", g.name)
        assert size and float(size.group(1)) == g.memory_gib, g.name
    assert get_device("rtx4090").memory_gib == 24 and get_device("h200").memory_gib == 141
    assert get_device("a100").id == "a100-40g"
    with pytest.raises(KeyError, match="unknown GPU 'voodoo5'; known: rtx3060"):
        get_device("voodoo5")


def test_datasheet_numbers():
    assert pcie_gbs(4, 16) == pytest.approx(31.5, abs=0.05)
    assert pcie_gbs(5, 16) == pytest.approx(63.0, abs=0.05)
    h100, rtx4090 = get_device("h100"), get_device("rtx4090")
    assert h100.bf16_tflops == pytest.approx(989.4) and h100.mem_gbs == 3350
    assert rtx4090.bf16_tflops == pytest.approx(165.2) and rtx4090.mem_gbs == 1008
    assert get_device("h200").mem_gbs == 4800 and get_device("h200").bf16_tflops == h100.bf16_tflops
    assert get_device("rtx4060ti").pcie_lanes == 8
    assert h100.peak_flops("torch.bfloat16") == 989.4e12
    assert h100.peak_flops("float32") == h100.fp32_tflops * 1e12


@pytest.mark.parametrize("name,gid", [
    ("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H200", "h200"), ("NVIDIA GeForce RTX 4090", "rtx4090"),
    ("NVIDIA A100-SXM4-80GB", "a100-80g"), ("NVIDIA A100-SXM4-40GB", "a100-40g"), ("NVIDIA L4", "l4"),
    ("NVIDIA L40S", "l40s"), ("NVIDIA GeForce RTX 3060", "rtx3060"), ("NVIDIA GeForce RTX 5090", "rtx5090"),
    ("NVIDIA GeForce RTX 3060 Ti", None), ("NVIDIA H100 PCIe", None), ("NVIDIA GH200 480GB", None),
    ("NVIDIA GeForce RTX 4070 SUPER", None), ("NVIDIA L40", None),
])
def test_torch_device_names(name, gid):
    g = match_device_name(name)
    assert (g.id if g else None) == gid


def test_device_from_torch(monkeypatch):
    """No CUDA: None. With CUDA (faked here, so the test runs on every machine): the table's row for the device's
    name, or None for a GPU the table does not know."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device_from_torch() is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "NVIDIA H100 80GB HBM3")
    assert device_from_torch() is get_device("h100")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "NVIDIA GH200 480GB")
    assert device_from_torch() is None


# ------------------------------------------------------------------------------------------------ seconds
def tiny_counts(flops=2e12, nbytes=1e9, n=3) -> Counts:
    c = Counts()
    c.add_op("denoise", "mm|a", "matmul", flops, nbytes, n, "bfloat16")
    c.add_op("denoise", "add|b", "elementwise", 0, 4e8, 10, "bfloat16")
    return c


def test_predict_seconds_equals_hand_computation():
    e = Efficiency(eff_matmul=0.5, eff_conv=0.3, eff_attention=0.4, eff_memory=0.8, launch_overhead_s=1e-3,
                   launch_hiding=0.5, eff_transfer=0.5, transfer_latency_s=1e-3, overlap=0.25)
    c = tiny_counts()
    c.add_transfer("denoise", 6.3e9, "weights", 2)
    h100 = get_device("h100")
    p = predict_seconds(c, h100, e)["denoise"]
    t_mm = max(2e12 / (989.4e12 * 0.5), 1e9 / (3350e9 * 0.8))       # 4.042 ms, compute-bound
    t_add = 4e8 / (3350e9 * 0.8)                                    # 0.149 ms
    assert p["matmul"] == pytest.approx(3 * t_mm)
    assert p["elementwise"] == pytest.approx(10 * t_add)
    excess = 10 * (1e-3 - t_add)                                    # the adds wait for the host
    lead = 3 * (t_mm - 1e-3)                                        # the matmuls let it run ahead
    assert p["launch"] == pytest.approx(excess - 0.5 * min(lead, excess))
    compute = 3 * t_mm + 10 * t_add + p["launch"]
    assert p["compute"] == pytest.approx(compute)
    transfer = 6.3e9 / (h100.host_gbs * 1e9 * 0.5) + 2 * 1e-3
    assert p["transfer"] == pytest.approx(transfer)
    assert p["total"] == pytest.approx(compute + max(0.0, transfer - 0.25 * compute))
    assert rollup(predict_seconds(c, h100, e))["total"]["total"] == pytest.approx(p["total"])


def test_serial_sections_pay_every_launch():
    e = Efficiency(launch_overhead_s=1e-3, launch_hiding=1.0)
    c = tiny_counts()
    s = c.scaled(1.0)
    s.serial.add("denoise")
    free, serial = predict_seconds(c, "h100", e)["total"], predict_seconds(s, "h100", e)["total"]
    assert serial["launch"] == pytest.approx(13 * 1e-3)
    assert serial["total"] > free["total"]


def test_predict_seconds_is_monotone():
    e = Efficiency()
    base = predict_seconds(tiny_counts(), "h100", e)["total"]["total"]
    assert predict_seconds(tiny_counts(flops=4e12), "h100", e)["total"]["total"] > base
    assert predict_seconds(tiny_counts(nbytes=1e12), "h100", e)["total"]["total"] > base
    assert predict_seconds(tiny_counts(n=6), "h100", e)["total"]["total"] > base
    slow = [predict_seconds(tiny_counts(), g, e)["total"]["total"] for g in ("rtx3060", "rtx4090", "h100")]
    assert slow[0] > slow[1] > slow[2]
    assert predict_seconds(tiny_counts(), "h100", e.with_(eff_matmul=0.25))["total"]["total"] > base
    with pytest.raises(ValueError, match=r"Efficiency.eff_matmul must be in \(0, 1\], got 1.5"):
        Efficiency(eff_matmul=1.5)


def test_fitted_constants_are_sane():
    path = ROOT / "bench" / "results" / "time_model.json"
    data = json.loads(path.read_text())
    eff = load_efficiency(path)
    assert eff.to_dict() == pytest.approx(data["efficiency"])
    for name in ("eff_matmul", "eff_conv", "eff_attention", "eff_memory", "eff_transfer"):
        assert 0 < getattr(eff, name) <= 1, name
    assert 0 <= eff.overlap <= 1 and 0 <= eff.launch_hiding <= 1
    assert 1e-6 <= eff.launch_overhead_s <= 2e-4
    rows = data["rows"]
    assert {r["split"] for r in rows} >= {"fit", "holdout"}
    for r in rows:
        assert r["predicted_s"] > 0 and math.isclose(r["ratio"], r["predicted_s"] / r["measured_s"], rel_tol=0.01)
    measured = json.loads((ROOT / "bench" / "results" / "gpu_measurements.json").read_text())["rows"]
    assert {r["id"] for r in measured} == {r["id"] for r in rows}
    assert all(r["source"]["file"].startswith("bench/results/gpu_") for r in measured)
