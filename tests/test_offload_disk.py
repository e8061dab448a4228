"""Host memory bounded: offload group from disk (the denoiser's weights streamed from safetensors files, not
held in host memory), the host peak it leaves in the simulation, the planner choosing it only where host
memory would not hold the weights, a render with it, and the process's host peak in the sidecar."""
from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest
import torch

import vidrt.run.render as runner
from vidrt.config import load_config
from vidrt.core.errors import VidrtError
from vidrt.engine.offload import OffloadConfig, disable_offload, enable_offload
from vidrt.memory.planner import plan
from vidrt.memory.settings import MemorySettings, fixed_settings
from vidrt.memory.simulate import simulate
from vidrt.memory.simulate.placement import leaf_resident
from vidrt.models import get_adapter

REPO = Path(__file__).resolve().parents[1]


def _latents(pipe):
    g = torch.Generator().manual_seed(0)
    return pipe(prompt="a red circle", num_frames=5, height=32, width=32, num_inference_steps=2, generator=g,
                output_type="latent").frames


def test_denoiser_streams_from_files_and_gives_the_same_latents(tmp_path):
    """Every group of the denoiser gets its own file; the encoders stream from host memory (diffusers' disk path
    would write UMT5's tied embedding after the first group emptied it: measured 0.025 off). Latents agree to
    float rounding only: tensors read by safetensors sit at other alignments than the originals, which changes
    the blocking of the CPU's GEMM (cloning them after the read gives 0 difference)."""
    pipe = get_adapter("wan").tiny(0, num_layers=2)
    reference = _latents(pipe)
    folder = tmp_path / "weights"
    info = enable_offload(pipe, OffloadConfig("group", "cpu", disk_path=str(folder)))
    try:
        out = _latents(pipe)
    finally:
        disable_offload(pipe)
    assert info["disk_path"] == str(folder) and "text_encoder" in info["streamed"]
    files = list(folder.glob("group_*.safetensors"))
    weighted = [m for m in pipe.transformer.modules()
                if not list(m.children()) and next(m.parameters(recurse=False), None) is not None]
    assert len(files) >= len(weighted)            # one file per leaf group (+ the module's own parameters)
    assert (out - reference).abs().max().item() <= 1e-5


def test_a_folder_with_files_is_refused(tmp_path):
    (tmp_path / "group_0.safetensors").write_bytes(b"x")
    pipe = get_adapter("wan").tiny(0, num_layers=1)
    with pytest.raises(VidrtError, match="memory.offload_disk: .* is not empty"):
        enable_offload(pipe, OffloadConfig("group", "cpu", disk_path=str(tmp_path)))


def test_simulated_host_peak_holds_only_the_copies_in_flight():
    cfg = load_config(REPO / "samples/wan-random.yaml", ["devices=[cuda]", "frames=5", "height=64", "width=64"])
    pipe = get_adapter("wan").tiny(0)
    memory = simulate(cfg, MemorySettings(offload="group"), pipe=pipe, track_modules=False)
    disk = simulate(cfg, MemorySettings(offload="group", disk=True), pipe=pipe, track_modules=False)
    p = disk.params
    assert memory.host_peak_bytes == sum(p.values()) - p["vae"]
    assert disk.host_peak_bytes == p["text_encoder"] + leaf_resident(pipe.transformer)
    assert disk.peak_bytes == memory.peak_bytes        # the accelerator sees the same copies


def test_planner_streams_from_disk_only_where_host_memory_is_short():
    cfg = load_config(REPO / "samples/wan-random.yaml")
    free = plan(cfg, "100GiB", gpu="rtx4090", host_budget="1000GiB")
    group = [c for c in free.candidates if c["settings"]["offload"] == "group"]
    device_budget = min(c["peak_bytes"] for c in group)   # only streaming fits the device
    from_memory = min(c["host_peak_bytes"] for c in group if not c["settings"]["disk"])
    from_disk = min(c["host_peak_bytes"] for c in group if c["settings"]["disk"])
    assert from_disk < from_memory
    roomy = plan(cfg, device_budget, gpu="rtx4090", host_budget="1000GiB")
    assert roomy.settings.offload == "group" and not roomy.settings.disk   # disk only costs time
    short = plan(cfg, device_budget, gpu="rtx4090", host_budget=(from_disk + from_memory) // 2)
    assert short.settings.offload == "group" and short.settings.disk and short.fits
    assert "disk_write" in short.predicted_seconds and "disk_write" not in roomy.predicted_seconds
    assert short.predicted_seconds["total"] >= roomy.predicted_seconds["total"]
    assert short.memory_config()["offload_disk"] == "on"
    with pytest.raises(VidrtError, match="cannot fit: the plans that fit the device budget need at least .* of "
                                         "host memory"):
        plan(cfg, device_budget, gpu="rtx4090", host_budget=from_disk - 1)


def test_offload_disk_belongs_to_offload_group():
    cfg = load_config(REPO / "samples/wan-random.yaml", ["memory.offload=none", "memory.offload_disk=on"])
    with pytest.raises(VidrtError, match="memory.offload_disk: streaming from disk is a way of offload group"):
        fixed_settings(cfg)
    off = load_config(REPO / "samples/wan-random.yaml", ["memory.offload_disk=off"])
    assert fixed_settings(off)["disk"] is False
    with pytest.raises(VidrtError, match="memory.host_budget"):
        load_config(REPO / "samples/wan-random.yaml", ["memory.host_budget=lots"])


def test_render_from_disk_matches_and_leaves_no_files(tmp_path, captured):
    frames = captured
    base = ["steps=3", "memory.budget=null"]
    cfg = load_config(REPO / "samples/tiny.yaml", base)
    runner.render(cfg, tmp_path / "plain.mp4", show_progress=False)
    cfg = load_config(REPO / "samples/tiny.yaml", base + ["memory.offload=group", "memory.offload_disk=on"])
    result = runner.render(cfg, tmp_path / "disk.mp4", show_progress=False)
    memory = result.sidecar["memory"]
    folder = Path(memory["offload_folder"])
    assert memory["offload"]["disk_path"] == str(folder) and folder.parent == tmp_path
    assert result.sidecar["host_peak_bytes"] > 0
    assert np.abs(frames[0].astype(int) - frames[1].astype(int)).max() <= 1
    del result
    gc.collect()                 # the files go with the pipeline the render loaded
    assert not folder.exists()
