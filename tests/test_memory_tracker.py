"""The memory tracker: exact byte counts on small cases, stage/module reports, and a cross-check against the
process high-water mark (VmHWM) in a subprocess."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from vidrt.memory.tracker import MemoryTracker, track_memory
from vidrt.core.tensors import module_bytes

ROOT = Path(__file__).resolve().parents[1]


def test_counts_new_storages_not_views_or_inplace():
    x = torch.zeros(1000)
    with MemoryTracker("cpu") as mem:
        with mem.stage("s"):
            v = x.view(10, 100)
            x.add_(1)
            v.transpose(0, 1)
            y = torch.empty(2000, dtype=torch.float32)  # 8000 bytes
            z = y * 2  # 8000 more
            del y
            w = torch.empty(500, dtype=torch.float64)  # 4000: peak stays 16000
    s = mem.stages[0]
    assert s["activation_bytes"] == 16000
    assert s["input_bytes"] == 0
    assert mem.peak_bytes == 16000
    del z, w


def test_inputs_and_params_apart_from_activations():
    lin = torch.nn.Linear(64, 32)
    with MemoryTracker("cpu") as mem:
        h = torch.randn(8, 64)  # created inside the run: an input to the next stage
        with mem.stage("fwd", params=[lin]):
            out = lin(h)
    s = mem.stages[0]
    assert s["param_bytes"] == module_bytes([lin]) == (64 * 32 + 32) * 4
    assert s["input_bytes"] == 8 * 64 * 4
    assert s["activation_bytes"] == 8 * 32 * 4
    assert s["peak_bytes"] == s["param_bytes"] + s["input_bytes"] + s["activation_bytes"]
    assert out.shape == (8, 32)


def test_fake_tensors_counted_without_allocation():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        with MemoryTracker("cuda", count_device="cpu") as mem:
            with mem.stage("big"):
                a = torch.empty(1 << 30, dtype=torch.bfloat16)  # 2 GiB, never allocated
                b = a + 1
                del a, b
    assert mem.stages[0]["activation_bytes"] == 2 * 2 * (1 << 30)
    assert mem.peak_bytes == 4 * (1 << 30)


def test_pipeline_stages_and_modules():
    from torch.nn.modules import module as torch_module

    from vidrt.models import get_adapter

    pipe = get_adapter("wan").tiny(0)
    global_hooks = (len(torch_module._global_forward_pre_hooks), len(torch_module._global_forward_hooks))
    with torch.no_grad(), track_memory("cpu", track_modules=pipe) as mem:
        with mem.stage("text_encode", params=[pipe.text_encoder]):
            emb = pipe.text_encoder(torch.randint(0, 10, (1, 16))).last_hidden_state
        mem.begin_stage("denoise", params=[pipe.transformer])
        out = pipe.transformer(torch.randn(1, 16, 3, 16, 16), torch.tensor([10]), emb).sample
        mem.begin_stage("vae_decode", params=[pipe.vae])  # ends "denoise"
        video = pipe.vae.decode(out).sample
        mem.end_stage()
    names = [s["name"] for s in mem.stages]
    assert names == ["text_encode", "denoise", "vae_decode"]
    for s in mem.stages:
        assert set(s) >= {"name", "seconds", "peak_bytes", "param_bytes", "activation_bytes"}
        assert s["activation_bytes"] > 0 and s["seconds"] >= 0
        assert s["peak_bytes"] >= s["param_bytes"] + s["activation_bytes"]
    # the denoiser's weights, counted here without the tracker's helper (the tiny twin ties no weights)
    assert mem.stages[1]["param_bytes"] == sum(t.numel() * t.element_size() for t in
                                               [*pipe.transformer.parameters(), *pipe.transformer.buffers()])
    assert mem.peak_bytes == max(s["peak_bytes"] for s in mem.stages)
    mods = mem.modules
    assert mods and all(m["name"].split(".")[0] in ("text_encoder", "transformer", "vae") for m in mods)
    assert mods == sorted(mods, key=lambda m: -m["activation_bytes"])
    d = json.loads(json.dumps(mem.to_dict()))
    assert d["peak_bytes"] == mem.peak_bytes and len(d["stages"]) == 3 and d["timeline"]
    assert video.shape[2] == 9
    # the module hooks (global forward hooks) are gone after the run, and a later, larger forward records nothing
    assert (len(torch_module._global_forward_pre_hooks), len(torch_module._global_forward_hooks)) == global_hooks
    before = mem.modules
    with torch.no_grad():
        pipe.transformer(torch.randn(1, 16, 5, 16, 16), torch.tensor([10]), emb)
    assert mem.modules == before


HWM_SCRIPT = textwrap.dedent(r"""
    import json, torch
    from torch import nn
    import torch.nn.functional as F
    torch.set_num_threads(1)
    from vidrt.memory.tracker import MemoryTracker

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    class Block(nn.Module):
        # windowed attention + a wide MLP: memory-heavy, compute-light
        def __init__(self, d=128, heads=2, window=256):
            super().__init__()
            self.heads, self.window = heads, window
            self.qkv = nn.Linear(d, 3 * d)
            self.ff = nn.Sequential(nn.Linear(d, 8 * d), nn.GELU(), nn.Linear(8 * d, d))
            self.norm = nn.LayerNorm(d)
        def forward(self, x):
            b, n, d = x.shape
            w = n // self.window
            q, k, v = self.qkv(self.norm(x)).view(b * w, self.window, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            x = x + F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
            return x + self.ff(self.norm(x))

    model = nn.Sequential(Block(), Block(), nn.Conv1d(16384, 16384, 1, groups=16384)).eval()
    x = torch.randn(1, 16384, 128)
    results = []
    with torch.no_grad():
        with MemoryTracker("cpu"):   # the first tracked run pays one-off imports; not part of the check
            model[:2](x[:, :512])
        for _ in range(2):
            mem = MemoryTracker("cpu", timeline=False)
            open("/proc/self/clear_refs", "w").write("5")
            base = status("VmRSS")
            with mem:
                with mem.stage("fwd", params=[model]):
                    out = model(x)
                    del out
            results.append([mem.stages[0]["activation_bytes"], status("VmHWM") - base])
    print(json.dumps(results))
""")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_tracker_matches_process_high_water_mark(tmp_path):
    script = tmp_path / "hwm.py"
    script.write_text(HWM_SCRIPT)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1",
               PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for tracked, hwm in results:
        assert tracked > 50 * 2**20
        assert abs(tracked - hwm) <= 0.10 * hwm, (tracked, hwm)
