"""Fit vidrt's time model (vidrt/memory/timemodel.py) to the GPU wall times the project measured.

    python bench/fit_time_model.py                 # count every workload, fit, write time_model.json + .md
    python bench/fit_time_model.py --reuse-counts  # refit from the counts stored in time_model.json
    python bench/fit_time_model.py --counts FILE   # refit from another counts file (each counting run
                                                   # also writes $TMPDIR/vidrt_time_model_counts.json)
    python bench/fit_time_model.py --report-only   # re-render time_model.md from time_model.json

The measured rows are bench/results/gpu_measurements.json (transcribed from the hand-written gpu_*.md
tables). Each row's workload is rebuilt at full size on fake CPU tensors (FakeTensorMode: nothing is
allocated) from the real diffusers classes and the shipped configs, run under vidrt.memory.cost.CostCounter,
and predicted with vidrt.memory.timemodel.predict_seconds on the row's GPU. Wan's 30 transformer blocks and
UMT5-XXL's 24 layers run as 2 and are scaled (the simulator's REPEATED rule: identical layers, identical
counts); Wan VAE decodes run 2 and 3 latent frames and are extrapolated linearly in latent frames (every
latent frame after the first runs the same ops). The efficiency constants are fitted by least squares in
log space (Nelder-Mead on bounded transforms, numpy only) on the FIT rows; HOLDOUT rows are not seen by the
fit; EXCLUDED rows are first-session UNet times that a rerun of the same case superseded (gpu_check.md's
footnote: cuDNN autotuning, slicing code since changed); they are kept, predicted and reported. A weak prior
keeps constants the rows cannot separate physical (see PRIOR).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import results_io as rio  # noqa: E402
from vidrt.memory.cost import CostCounter, Counts  # noqa: E402
from vidrt.memory.devices import get_device  # noqa: E402
from vidrt.memory.timemodel import Efficiency, predict_seconds, rollup  # noqa: E402

RESULTS = ROOT / "bench" / "results"
MEASURED = RESULTS / "gpu_measurements.json"
OUT_JSON = RESULTS / "time_model.json"
OUT_MD = RESULTS / "time_model.md"
WAN = "Wan-AI--Wan2.1-T2V-1.3B-Diffusers"
SD = "stable-diffusion-v1-5--stable-diffusion-v1-5"
MOTION = "guoyww--animatediff-motion-adapter-v1-5-2"
I2V = "ali-vilab--i2vgen-xl"
KEEP = 2   # repeated layers actually run


# ------------------------------------------------------------------------------------------ package access
def _first_import(*paths: str):
    """The first importable `module:attr` (the package is being reorganised; try the old and new homes)."""
    import importlib

    for path in paths:
        mod, attr = path.split(":")
        try:
            return getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"none of {paths} is importable")


def enable_slicing(*a, **k):
    return _first_import("vidrt.slicing:enable_slicing", "vidrt.engine.slicing:enable_slicing")(*a, **k)


def disable_slicing(*a, **k):
    return _first_import("vidrt.slicing:disable_slicing", "vidrt.engine.slicing:disable_slicing")(*a, **k)


def vae_fn(name: str):
    return _first_import(f"vidrt.slicing.vae:{name}", f"vidrt.engine.slicing.vae:{name}",
                         f"vidrt.models.wan_vae:{name}")


def known(model: str) -> Path:
    for base in (ROOT / "vidrt" / "known_configs", ROOT / "vidrt" / "models" / "known_configs"):
        if (base / model).is_dir():
            return base / model
    hits = sorted(ROOT.glob(f"vidrt/**/known_configs/{model}"))
    if not hits:
        raise FileNotFoundError(f"known_configs/{model} not found under vidrt/")
    return hits[0]


def cfg(model: str, sub: str = "") -> dict:
    path = known(model) / sub / "config.json" if sub else known(model) / "config.json"
    return {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}


def cast(module: nn.Module, dtype: torch.dtype, keep_fp32: tuple[str, ...] = ()) -> nn.Module:
    """module.to(dtype) for fake tensors (whose .to cannot swap parameters in place)."""
    for name, mod in module.named_modules():
        for table, make in ((mod._parameters, lambda t: nn.Parameter(t.detach().to(dtype), requires_grad=False)),
                            (mod._buffers, lambda t: t.to(dtype))):
            for key, t in list(table.items()):
                if t is None or not t.is_floating_point() or t.dtype == dtype or f"{name}.{key}" in keep_fp32:
                    continue
                table[key] = make(t)
    return module.eval().requires_grad_(False)


def param_bytes(module: nn.Module, recurse: bool = True) -> int:
    ts = list(module.parameters(recurse=recurse)) + list(module.buffers(recurse=recurse))
    return sum(t.numel() * t.element_size() for t in ts)


# ------------------------------------------------------------------------------------------ counting
class Run:
    """One counted call: a CostCounter with optional per-module sections and weight-streaming hooks."""

    def __init__(self):
        self.cc = CostCounter()
        self.handles: list = []
        self.serial = False

    def section_modules(self, modules, name: str) -> None:
        for m in modules:
            self.handles += self.cc.hook_module(m, name)

    def stream_blocks(self, model: nn.Module, blocks) -> None:
        """diffusers block-level group offloading: everything outside the blocks once per call, each block
        once per call (host -> device)."""
        inside = sum(param_bytes(b) for b in blocks)
        rest = param_bytes(model) - inside
        self.handles.append(model.register_forward_pre_hook(lambda *_: self.cc.add_transfer(rest, "weights")))
        self.serial = False
        for b in blocks:
            nb = param_bytes(b)
            self.handles.append(b.register_forward_pre_hook(lambda *_, nb=nb: self.cc.add_transfer(nb, "weights")))

    def stream_leaves(self, model: nn.Module) -> None:
        """diffusers leaf-level group offloading: every module that owns parameters onloads them on every
        call (a sliced module called once per chunk onloads once per chunk)."""
        for m in model.modules():
            nb = param_bytes(m, recurse=False)
            if nb:
                self.handles.append(m.register_forward_pre_hook(lambda *_, nb=nb: self.cc.add_transfer(nb, "weights")))
        self.serial = True      # diffusers syncs the compute stream after every group: launches serialise

    def __enter__(self):
        self.cc.__enter__()
        return self

    def __exit__(self, *exc):
        self.cc.__exit__(*exc)
        for h in self.handles:
            h.remove()

    @property
    def counts(self) -> Counts:
        return self.cc.counts.marked_serial() if self.serial else self.cc.counts


def _fake():
    from torch._subclasses.fake_tensor import FakeTensorMode

    return FakeTensorMode(allow_non_fake_inputs=True)


class Models:
    """Full-size models on fake CPU tensors, built once (repeated layers reduced to KEEP)."""

    def __init__(self):
        self._cache: dict[str, object] = {}

    def get(self, key: str):
        if key not in self._cache:
            self._cache[key] = getattr(self, "_" + key)()
        return self._cache[key]

    def _wan(self):
        from diffusers import WanTransformer3DModel

        c = cfg(WAN, "transformer")
        full = c["num_layers"]
        c["num_layers"] = KEEP
        m = cast(WanTransformer3DModel.from_config(c), torch.bfloat16,
                 keep_fp32=("rope.freqs_cos", "rope.freqs_sin"))
        return m, full / KEEP

    def _wan_vae(self):
        from diffusers import AutoencoderKLWan

        return cast(AutoencoderKLWan.from_config(cfg(WAN, "vae")), torch.bfloat16)

    def _umt5_stub(self):
        """bench/gpu_pipeline.py's stand-in: UMT5-XXL width, 1 layer, the word tokenizer's vocabulary."""
        from transformers import UMT5Config, UMT5EncoderModel

        c = cfg(WAN, "text_encoder")
        c.update(num_layers=1, vocab_size=64, pad_token_id=0, eos_token_id=1)
        c.pop("architectures", None)
        return cast(UMT5EncoderModel(UMT5Config(**c)), torch.bfloat16), 1.0

    def _umt5_xxl(self):
        from transformers import UMT5Config, UMT5EncoderModel

        c = cfg(WAN, "text_encoder")
        c.pop("architectures", None)
        full = c["num_layers"]
        c["num_layers"] = KEEP
        return cast(UMT5EncoderModel(UMT5Config(**c)), torch.bfloat16), full / KEEP

    def _ad_unet(self):
        from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

        unet = UNet2DConditionModel.from_config(cfg(SD, "unet"))
        motion = MotionAdapter.from_config(cfg(MOTION))
        stand_in = SimpleNamespace(config=dict(motion.config), to=lambda *a, **k: None)
        return cast(UNetMotionModel.from_unet2d(unet, stand_in, load_weights=False), torch.float16)

    def _clip(self):
        from transformers import CLIPTextConfig, CLIPTextModel

        c = cfg(SD, "text_encoder")
        c.pop("architectures", None)
        return cast(CLIPTextModel(CLIPTextConfig(**c)), torch.float16)

    def _sd_vae(self):
        from diffusers import AutoencoderKL

        return cast(AutoencoderKL.from_config(cfg(SD, "vae")), torch.float16)

    def _i2v_unet(self):
        from diffusers import I2VGenXLUNet

        return cast(I2VGenXLUNet.from_config(cfg(I2V, "unet")), torch.float16)


MODELS = Models()


def _slice(model, slicing):
    disable_slicing(model)
    if slicing == "off":
        return
    if slicing == "auto":
        enable_slicing(model)
    else:
        enable_slicing(model, **{f"chunk_{k}": v for k, v in slicing.items()})


def wan_forward(frames: int, slicing, stream: bool = False) -> Counts:
    """One Wan 1.3B transformer call at frames x 480 x 832 (bench/gpu_check.py's inputs); blocks scaled to 30."""
    model, factor = MODELS.get("wan")
    _slice(model, slicing)
    lat = (frames - 1) // 4 + 1
    x = torch.randn(1, 16, lat, 60, 104, dtype=torch.bfloat16)
    t = torch.full((1,), 999.0)
    text = torch.randn(1, 512, 4096, dtype=torch.bfloat16)
    run = Run()
    run.section_modules(model.blocks, "blocks")
    if stream:
        run.stream_blocks(model, list(model.blocks))
    with run:
        model(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)
    disable_slicing(model)
    return run.counts.scaled(factor, prefix="blocks")


def text_encoder(kind: str, stream: bool = False) -> Counts:
    """One text-encoder call (pipelines call it twice with CFG: prompt and negative prompt)."""
    if kind == "clip":
        model, factor, ids = MODELS.get("clip"), 1.0, torch.zeros(1, 77, dtype=torch.long)
        layers = []
    else:
        model, factor = MODELS.get(kind)
        ids = torch.zeros(1, 512, dtype=torch.long)
        layers = model.encoder.block
    run = Run()
    run.section_modules(layers, "layers")
    if stream:
        run.stream_leaves(model)
    with run:
        if kind == "clip":
            model(ids)
        else:
            model(ids, attention_mask=torch.ones(1, 512, dtype=torch.long))
    return run.counts.scaled(factor, prefix="layers")


def unet_forward(kind: str, slicing, stream: bool = False) -> Counts:
    """One UNet call, 16 x 512 x 512, CFG batch 2 (bench/gpu_check.py's inputs)."""
    model = MODELS.get(kind)
    _slice(model, slicing)
    x = torch.randn(2, 4, 16, 64, 64, dtype=torch.float16)
    t = torch.tensor(500)
    run = Run()
    if stream:
        run.stream_leaves(model)
    with run:
        if kind == "ad_unet":
            model(x, t, encoder_hidden_states=torch.randn(32, 77, 768, dtype=torch.float16))
        else:
            model(x, t, fps=torch.tensor([16, 16]), image_latents=torch.randn(2, 4, 16, 64, 64, dtype=torch.float16),
                  image_embeddings=torch.randn(2, 1024, dtype=torch.float16),
                  encoder_hidden_states=torch.randn(2, 77, 1024, dtype=torch.float16), return_dict=False)
    disable_slicing(model)
    return run.counts


def _to_uint8_host(video: torch.Tensor) -> None:
    """vidrt.video.to_uint8_frames on the device, then the frames to the host (the runner's writer)."""
    frames = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    frames.permute(1, 2, 3, 0).to("meta")


def wan_decode_stream(vae, z):
    """vidrt's streamed Wan decode (WanAdapter.decode_stream), or the same per-latent-frame loop where the
    adapter cannot be imported."""
    try:
        adapter = _first_import("vidrt.models.wan:WanAdapter")()
        yield from adapter.decode_stream(SimpleNamespace(vae=vae), z)
        return
    except ImportError:
        pass
    x = vae.post_quant_conv(z)
    vae.clear_cache()
    for i in range(z.shape[2]):
        vae._conv_idx = [0]
        yield vae.decoder(x[:, :, i:i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx,
                          first_chunk=i == 0).clamp(-1.0, 1.0).float()
    vae.clear_cache()


def wan_decode_n(mode: str, n: int, writer: bool) -> Counts:
    """Wan VAE decode of n latent frames (60 x 104) in one of the decode paths the measurements used."""
    vae = MODELS.get("wan_vae")
    vae.disable_tiling()
    z = torch.randn(1, 16, n, 60, 104, dtype=torch.bfloat16)
    run = Run()
    with run:
        if mode == "diffusers":                      # AutoencoderKLWan.decode (per frame, torch.cat, clamp)
            video = vae.decode(z, return_dict=False)[0]
        elif mode == "frame_buffer":                 # vidrt's decode_into_buffer
            video = vae_fn("decode_into_buffer")(vae, z, return_dict=False)[0]
        elif mode == "tiled_device":                 # diffusers' tiled_decode (all tiles on the device)
            vae.enable_tiling()
            video = vae.tiled_decode(z, return_dict=False)[0]
        elif mode == "stream":                       # WanAdapter.decode_stream, untiled
            video = None
            for chunk in wan_decode_stream(vae, z):
                if writer:
                    _to_uint8_host(chunk[0])
        elif mode == "tiled_host":                   # vidrt tiled_decode_via_host (host = meta)
            vae.enable_tiling()
            with vae_fn("decode_host")("meta"):
                for chunk in vae_fn("tiled_decode_via_host")(vae, z):
                    chunk.float()
            video = None
        else:
            raise ValueError(mode)
        if video is not None and writer:
            _to_uint8_host(video.float()[0])
    vae.disable_tiling()
    return run.counts


def wan_decode(mode: str, latent_frames: int, writer: bool = False) -> Counts:
    """Decode cost at `latent_frames`, extrapolated linearly from 2 and 3 latent frames."""
    c2, c3 = wan_decode_n(mode, 2, writer), wan_decode_n(mode, 3, writer)
    return c2.scaled(3 - latent_frames) + c3.scaled(latent_frames - 2)


def sd_vae_decode(per_frame: bool, writer: bool) -> Counts:
    """16 SD1.5 VAE decodes of 64x64 latents: one call on 16 images (diffusers' decode_latents) or 16 calls of
    one (vidrt: decode_per_frame with vae slicing)."""
    vae = MODELS.get("sd_vae")
    z = torch.randn(16, 4, 64, 64, dtype=torch.float16)
    run = Run()
    with run:
        parts = [vae.decode(z[i:i + 1]).sample for i in range(16)] if per_frame else [vae.decode(z).sample]
        video = torch.cat(parts).float() if per_frame else parts[0].float()
        if writer:
            _to_uint8_host(video.permute(1, 0, 2, 3))
    return run.counts


def pinning(*keys: str) -> Counts:
    """diffusers' group offloading with a CUDA stream copies every streamed tensor into page-locked host
    memory when it is applied (ModuleGroup._to_cpu(...).pin_memory()), and vidrt.render applies it on every
    render: the streamed weights cross host memory once per render (recorded as kind "pin", one copy per
    tensor)."""
    counts = Counts()
    for key in keys:
        model = MODELS.get(key)
        model, factor = model if isinstance(model, tuple) else (model, 1.0)
        if key == "wan":            # the reduced model: scale its blocks to the full count
            blocks = sum(param_bytes(b) for b in model.blocks)
            nbytes = param_bytes(model) - blocks + blocks * factor
            tensors = len(list(model.parameters())) * factor
        else:
            nbytes, tensors = param_bytes(model), len(list(model.parameters()))
        counts.add_transfer("", nbytes, "pin", tensors)
    return counts


# ------------------------------------------------------------------------------------------ workloads
PIECES = {
    "pin_wan": lambda: pinning("wan", "umt5_stub"),
    "pin_ad": lambda: pinning("ad_unet", "clip"),
    "wan81_off": lambda: wan_forward(81, "off"),
    "wan81_auto": lambda: wan_forward(81, "auto"),
    "wan81_t4096": lambda: wan_forward(81, {"tokens": 4096}),
    "wan81_auto_stream": lambda: wan_forward(81, "auto", stream=True),
    "wan33_off": lambda: wan_forward(33, "off"),
    "umt5_stub": lambda: text_encoder("umt5_stub"),
    "umt5_stub_stream": lambda: text_encoder("umt5_stub", stream=True),
    "umt5_xxl": lambda: text_encoder("umt5_xxl"),
    "clip": lambda: text_encoder("clip"),
    "clip_stream": lambda: text_encoder("clip", stream=True),
    "ad_off": lambda: unet_forward("ad_unet", "off"),
    "ad_auto": lambda: unet_forward("ad_unet", "auto"),
    "ad_f4p1024": lambda: unet_forward("ad_unet", {"frames": 4, "positions": 1024}),
    "ad_auto_stream": lambda: unet_forward("ad_unet", "auto", stream=True),
    "i2v_off": lambda: unet_forward("i2v_unet", "off"),
    "i2v_auto": lambda: unet_forward("i2v_unet", "auto"),
    "wanvae_diffusers_21": lambda: wan_decode("diffusers", 21),
    "wanvae_stream_21": lambda: wan_decode("stream", 21),
    "wanvae_stream_21_w": lambda: wan_decode("stream", 21, writer=True),
    "wanvae_stream_84_w": lambda: wan_decode("stream", 84, writer=True),
    "wanvae_tiled_device_21_w": lambda: wan_decode("tiled_device", 21, writer=True),
    "wanvae_tiled_host_21_w": lambda: wan_decode("tiled_host", 21, writer=True),
    "wanvae_tiled_host_84_w": lambda: wan_decode("tiled_host", 84, writer=True),
    "sdvae_batch16": lambda: sd_vae_decode(per_frame=False, writer=False),
    "sdvae_per_frame_w": lambda: sd_vae_decode(per_frame=True, writer=True),
}

# Workload of each measured row: [(piece, times, stage)]. Policy rows scale the blocks by the measured
# fraction of block evaluations (bench/gpu_policies.py counts them).
def recipe(row: dict) -> list[tuple[str, float, str]]:
    rid = row["id"]
    fwd = {"check1_wan_unsliced": "wan81_off", "profile_wan_unsliced": "wan81_off",
           "check1_wan_sliced_auto": "wan81_auto", "profile_wan_sliced_t4096": "wan81_t4096",
           "check1_ad_unsliced": "ad_off", "check3_ad_unsliced": "ad_off", "profile_ad_unsliced": "ad_off",
           "check1_ad_sliced_auto_old": "ad_auto", "check3_ad_sliced_auto": "ad_auto",
           "profile_ad_sliced_f4p1024": "ad_f4p1024",
           "check1_i2v_unsliced": "i2v_off", "check3_i2v_unsliced": "i2v_off",
           "check1_i2v_sliced_auto_old": "i2v_auto", "check3_i2v_sliced_auto": "i2v_auto"}
    if rid in fwd:
        return [(fwd[rid], 1, "denoise")]
    if rid == "check1_wan_vae_diffusers":
        return [("wanvae_diffusers_21", 1, "vae_decode")]
    if rid == "check1_wan_vae_streamed":
        return [("wanvae_stream_21", 1, "vae_decode")]
    if rid.startswith("policies_"):
        calls = 2 * row["steps"]
        return [("wan33_off:other", calls, "denoise"), ("wan33_off:blocks", calls * row["block_fraction"], "denoise")]
    steps = row.get("steps", 1)
    table = {
        "pipe_ad_diffusers": [("clip", 2, "text_encode"), ("ad_off", steps, "denoise"),
                              ("sdvae_batch16", 1, "vae_decode")],
        "pipe_ad_vidrt_resident": [("clip", 2, "text_encode"), ("ad_auto", steps, "denoise"),
                                   ("sdvae_per_frame_w", 1, "vae_decode")],
        "pipe_ad_vidrt_group": [("pin_ad", 1, "setup"), ("clip_stream", 2, "text_encode"),
                                ("ad_auto_stream", steps, "denoise"),
                                ("sdvae_per_frame_w", 1, "vae_decode")],
        "pipe_wan_diffusers": [("umt5_stub", 2, "text_encode"), ("wan81_off", 2 * steps, "denoise"),
                               ("wanvae_diffusers_21", 1, "vae_decode")],
        "pipe_wan_vidrt_resident": [("umt5_stub", 2, "text_encode"), ("wan81_auto", 2 * steps, "denoise"),
                                    ("wanvae_tiled_device_21_w", 1, "vae_decode")],
        "pipe_wan_vidrt_group": [("pin_wan", 1, "setup"), ("umt5_stub_stream", 2, "text_encode"),
                                 ("wan81_auto_stream", 2 * steps, "denoise"),
                                 ("wanvae_tiled_device_21_w", 1, "vae_decode")],
        "profile_wan_pipeline": [("umt5_xxl", 2, "text_encode"), ("wan81_off", 2 * steps, "denoise"),
                                 ("wanvae_stream_21", 1, "vae_decode")],
    }
    if rid in table:
        return table[rid]
    if rid.startswith("long_"):
        windows = row["windows"]
        decode = {"long_tiled_1x": "wanvae_tiled_host_21_w", "long_tiled_4x": "wanvae_tiled_host_84_w",
                  "long_streamed_1x": "wanvae_stream_21_w", "long_streamed_4x": "wanvae_stream_84_w"}[rid]
        return [("pin_wan", 1, "setup"), ("umt5_stub_stream", 2, "text_encode"),
                ("wan81_auto_stream", 2 * steps * windows, "denoise"),
                (decode, 1, "vae_decode")]
    raise KeyError(f"no workload recipe for row {rid}")


# FIT rows inform the constants; HOLDOUT rows test them; EXCLUDED rows are measurements their own tables flag.
SPLIT = {
    "profile_wan_unsliced": ("fit", "eff_attention, eff_matmul (unsliced Wan forward: 70 % attention FLOPs)"),
    "check3_ad_unsliced": ("fit", "eff_conv, eff_matmul, eff_memory (unsliced UNet: convs, GEMMs, norms)"),
    "check3_ad_sliced_auto": ("fit", "launch_overhead_s (one-frame chunks: 30x the launches)"),
    "check1_wan_sliced_auto": ("fit", "launch_overhead_s (auto token chunks: 46x the launches)"),
    "check1_wan_vae_streamed": ("fit", "eff_conv (Wan VAE: causal conv3d)"),
    "policies_full": ("fit", "eff_attention, eff_matmul on the H200 (14040 tokens)"),
    "pipe_ad_vidrt_group": ("fit", "transfer_latency_s, eff_transfer (leaf-level streaming: a copy and a sync "
                                   "per module call, re-fetched per chunk)"),
    "long_streamed_4x": ("fit", "eff_transfer, overlap (block-level streaming over 10 window calls)"),
    "profile_wan_sliced_t4096": ("fit", "launch_hiding (4096-token chunks: 12x the launches, long attention "
                                        "chunks hide them)"),
    "check1_wan_unsliced": ("holdout", ""),
    "profile_ad_unsliced": ("holdout", ""),
    "profile_ad_sliced_f4p1024": ("holdout", ""),
    "check3_i2v_unsliced": ("holdout", ""),
    "check3_i2v_sliced_auto": ("holdout", ""),
    "check1_wan_vae_diffusers": ("holdout", ""),
    "policies_taylorgate": ("holdout", ""),
    "policies_taylorgate_coast": ("holdout", ""),
    "policies_steprehash": ("holdout", ""),
    "policies_adaptiveskip": ("holdout", ""),
    "policies_firstblockcache": ("holdout", ""),
    "pipe_ad_diffusers": ("holdout", ""),
    "pipe_ad_vidrt_resident": ("holdout", ""),
    "pipe_wan_diffusers": ("holdout", ""),
    "pipe_wan_vidrt_resident": ("holdout", ""),
    "pipe_wan_vidrt_group": ("fit", "eff_transfer, overlap (block-level streaming vs the resident run)"),
    "profile_wan_pipeline": ("holdout", ""),
    "long_tiled_1x": ("holdout", ""),
    "long_tiled_4x": ("holdout", ""),
    "long_streamed_1x": ("holdout", ""),
    "check1_ad_unsliced": ("excluded", "its table says it included cuDNN autotuning (rerun: 0.17 s)"),
    "check1_ad_sliced_auto_old": ("excluded", "slicing code before deferred up-sampling (rerun: 1.15 s)"),
    "check1_i2v_unsliced": ("excluded", "same code as the session-3 rerun, which measured 0.22 s"),
    "check1_i2v_sliced_auto_old": ("excluded", "slicing code before deferred up-sampling (rerun: 1.72 s)"),
}


# ------------------------------------------------------------------------------------------ counting all
def count_pieces(names: list[str], log=print) -> tuple[dict[str, Counts], dict[str, float]]:
    pieces, secs = {}, {}
    with _fake(), torch.no_grad():
        for name in names:
            t0 = time.perf_counter()
            pieces[name] = PIECES[name]()
            secs[name] = round(time.perf_counter() - t0, 2)
            tot = pieces[name].totals()
            tflop = sum(tot[c]["flops"] for c in ("matmul", "attention")) / 1e12
            log(f"  {name:28s} {secs[name]:6.1f} s  {tflop:9.2f} TFLOP "
                f"{sum(tot[c]['launches'] for c in tot if c != 'transfer'):9.0f} launches "
                f"{sum(tot['transfer'].values()) / 1e9:7.2f} GB moved")
    return pieces, secs


def counter_overhead(repeats: int = 3) -> dict[str, float]:
    """Seconds of a fake forward with and without the CostCounter (is it cheap enough to leave on?): the
    2-block Wan 1.3B transformer at 81x480x832 and the full SD1.5 + motion-adapter UNet, unsliced."""
    out = {}
    with _fake(), torch.no_grad():
        wan, _ = MODELS.get("wan")
        unet = MODELS.get("ad_unet")
        x = torch.randn(1, 16, 21, 60, 104, dtype=torch.bfloat16)
        text = torch.randn(1, 512, 4096, dtype=torch.bfloat16)
        ux = torch.randn(2, 4, 16, 64, 64, dtype=torch.float16)
        utext = torch.randn(32, 77, 768, dtype=torch.float16)
        cases = {"wan_2_blocks": lambda: wan(x, torch.full((1,), 999.0), text, return_dict=False),
                 "animatediff_unet": lambda: unet(ux, torch.tensor(500), encoder_hidden_states=utext)}
        for name, fn in cases.items():
            fn()
            for counted in (False, True):
                best = float("inf")
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    if counted:
                        with CostCounter():
                            fn()
                    else:
                        fn()
                    best = min(best, time.perf_counter() - t0)
                out[f"{name}_{'counted' if counted else 'plain'}_s"] = round(best, 3)
    return out


def piece(pieces: dict[str, Counts], ref: str) -> Counts:
    name, _, part = ref.partition(":")
    c = pieces[name]
    if part == "blocks":
        return c.select("blocks")
    if part == "other":
        return c.select("")
    return c


def row_counts(row: dict, pieces: dict[str, Counts]) -> Counts:
    total = Counts()
    for ref, times, stage in recipe(row):
        total = total + piece(pieces, ref).scaled(times).renamed(stage)
    return total


# ------------------------------------------------------------------------------------------ fitting
PARAMS = ("eff_matmul", "eff_conv", "eff_attention", "eff_memory", "launch_overhead_s", "launch_hiding",
          "eff_transfer", "transfer_latency_s", "overlap")
BOUNDS = {"eff_matmul": (0.05, 1.0), "eff_conv": (0.02, 1.0), "eff_attention": (0.05, 1.0), "eff_memory": (0.05, 1.0),
          "launch_overhead_s": (1e-6, 2e-4), "eff_transfer": (0.02, 1.0), "transfer_latency_s": (1e-7, 1e-2),
          "overlap": (0.0, 1.0), "launch_hiding": (0.0, 1.0)}
LOG_PARAMS = ("launch_overhead_s", "transfer_latency_s")
# Weak priors: nominal values the fit is pulled toward (PRIOR_WEIGHT x squared distance in the fit's bounded
# coordinates) so that constants the rows barely tell apart stay physical. Nominal: large bf16 GEMMs reach
# 60-75 % of dense peak in cuBLAS, FlashAttention-2-class kernels 35-50 %, cuDNN convolutions far less,
# eager elementwise kernels 70-90 % of DRAM bandwidth; eager PyTorch spends 10-30 µs of host time per op;
# pinned host-to-device copies reach about half of nominal PCIe, with a sync and a hook per copy.
PRIOR = Efficiency(eff_matmul=0.6, eff_conv=0.3, eff_attention=0.45, eff_memory=0.8, launch_overhead_s=15e-6,
                   launch_hiding=0.5, eff_transfer=0.5, transfer_latency_s=50e-6, overlap=0.5)
PRIOR_WEIGHT = 0.002


def _to_eff(z: np.ndarray) -> Efficiency:
    vals = {}
    for p, zi in zip(PARAMS, z):
        lo, hi = BOUNDS[p]
        s = 1 / (1 + math.exp(-min(max(float(zi), -60.0), 60.0)))
        vals[p] = math.exp(math.log(lo) + s * (math.log(hi) - math.log(lo))) if p in LOG_PARAMS \
            else lo + s * (hi - lo)
    return Efficiency(**vals)


def _from_eff(e: Efficiency) -> np.ndarray:
    z = []
    for p in PARAMS:
        lo, hi = BOUNDS[p]
        v = min(max(getattr(e, p), lo), hi)
        s = (math.log(v) - math.log(lo)) / (math.log(hi) - math.log(lo)) if p in LOG_PARAMS \
            else (v - lo) / (hi - lo)
        s = min(max(s, 1e-4), 1 - 1e-4)
        z.append(math.log(s / (1 - s)))
    return np.array(z)


def nelder_mead(f, x0: np.ndarray, iters: int = 4000, step: float = 0.6, tol: float = 1e-10) -> np.ndarray:
    n = len(x0)
    pts = [x0] + [x0 + step * np.eye(n)[i] for i in range(n)]
    vals = [f(p) for p in pts]
    for _ in range(iters):
        order = np.argsort(vals)
        pts, vals = [pts[i] for i in order], [vals[i] for i in order]
        if abs(vals[-1] - vals[0]) < tol:
            break
        c = np.mean(pts[:-1], axis=0)
        xr = c + (c - pts[-1])
        fr = f(xr)
        if fr < vals[0]:
            xe = c + 2 * (c - pts[-1])
            fe = f(xe)
            pts[-1], vals[-1] = (xe, fe) if fe < fr else (xr, fr)
        elif fr < vals[-2]:
            pts[-1], vals[-1] = xr, fr
        else:
            xc = c + 0.5 * (pts[-1] - c)
            fc = f(xc)
            if fc < vals[-1]:
                pts[-1], vals[-1] = xc, fc
            else:
                pts = [pts[0]] + [pts[0] + 0.5 * (p - pts[0]) for p in pts[1:]]
                vals = [vals[0]] + [f(p) for p in pts[1:]]
    return pts[int(np.argmin(vals))]


class FastRow:
    """predict_seconds for one row as numpy arrays (the fit evaluates thousands of parameter sets).
    Checked against predict_seconds after the fit."""

    KINDS = ("matmul", "conv", "attention", "elementwise", "host")

    def __init__(self, counts: Counts, device):
        from vidrt.memory.timemodel import _CONV, _op_name

        self.dev = device
        sec, kind, n, fl, by, peak = [], [], [], [], [], []
        self.sections = counts.sections()
        self.serial = np.array([s in counts.serial for s in self.sections])
        for i, s in enumerate(self.sections):
            for sig, (cat, cnt, f, b, dt) in counts.ops.get(s, {}).items():
                k = cat if cat != "matmul" else ("conv" if _op_name(sig) in _CONV else "matmul")
                if k == "matmul" or k == "attention" or k == "conv":
                    if not f:
                        k = "elementwise"
                sec.append(i)
                kind.append(self.KINDS.index(k))
                n.append(cnt)
                fl.append(f)
                by.append(b)
                peak.append(device.peak_flops(dt))
        self.sec, self.kind, self.n = np.array(sec, int), np.array(kind, int), np.array(n, float)
        self.fl, self.by, self.peak = np.array(fl, float), np.array(by, float), np.array(peak, float)
        self.xfer = np.array([sum(b for b, _ in counts.transfers.get(s, {}).values()) for s in self.sections], float)
        self.copies = np.array([sum(c for _, c in counts.transfers.get(s, {}).values()) for s in self.sections], float)

    def total(self, e: Efficiency) -> float:
        bw = self.dev.mem_gbs * 1e9 * e.eff_memory
        eff = np.array([e.eff_matmul, e.eff_conv, e.eff_attention, 1.0, 1.0])[self.kind]
        t_mem = self.by / bw
        t_cmp = np.where(self.kind <= 2, self.fl / (self.peak * eff), 0.0)
        t = np.maximum(t_cmp, t_mem)
        host = self.kind == 4
        t = np.where(host, self.by / (e.host_memory_gbs * 1e9) + e.launch_overhead_s, t)
        dev_ops = ~host
        m = len(self.sections)
        work = np.bincount(self.sec, weights=self.n * t, minlength=m)
        L = e.launch_overhead_s
        serial_ops = self.serial[self.sec]
        excess = np.bincount(self.sec, weights=dev_ops * self.n * np.where(serial_ops, L, np.maximum(0.0, L - t)),
                             minlength=m)
        lead = np.bincount(self.sec, weights=dev_ops * self.n * np.maximum(0.0, t - L), minlength=m)
        compute = work + excess - np.where(self.serial, 0.0, e.launch_hiding * np.minimum(lead, excess))
        transfer = self.xfer / (self.dev.host_gbs * 1e9 * e.eff_transfer) + self.copies * e.transfer_latency_s
        return float(np.sum(compute + np.maximum(0.0, transfer - e.overlap * compute)))


def fit(rows: list[dict], counts: dict[str, Counts], prior_weight: float = PRIOR_WEIGHT) -> tuple[Efficiency, float]:
    fit_rows = [r for r in rows if SPLIT[r["id"]][0] == "fit"]
    fast = [FastRow(counts[r["id"]], get_device(r["device"])) for r in fit_rows]
    meas = np.array([r["seconds"] for r in fit_rows])

    z0 = _from_eff(PRIOR)

    def data_loss(z):
        eff = _to_eff(z)
        pred = np.array([f.total(eff) for f in fast])
        return float(np.mean(np.log(pred / meas) ** 2))

    def loss(z):
        return data_loss(z) + prior_weight * float(np.sum((z - z0) ** 2))

    best = None
    for start in (PRIOR, Efficiency(eff_matmul=0.8, eff_attention=0.6, eff_conv=0.5, launch_overhead_s=2e-5,
                                           eff_transfer=0.3, overlap=0.2)):
        z = nelder_mead(loss, _from_eff(start), iters=3000)
        z = nelder_mead(loss, z, iters=3000, step=0.2)
        if best is None or loss(z) < loss(best):
            best = z
    eff = _to_eff(best)
    for f, r in zip(fast, fit_rows):     # the fast path must agree with the library
        slow = predict_seconds(counts[r["id"]], get_device(r["device"]), eff)["total"]["total"]
        assert abs(slow - f.total(eff)) <= 1e-6 * max(1.0, slow), (r["id"], slow, f.total(eff))
    return eff, data_loss(best)


# ------------------------------------------------------------------------------------------ report
def machine() -> str:
    import os

    return (f"{platform.platform()}; {rio.cpu_name()}; {os.cpu_count()} CPUs; python {platform.python_version()}; "
            f"torch {torch.__version__}")


def table_rows(rows: list[dict], counts: dict[str, Counts], eff: Efficiency) -> list[dict]:
    out = []
    for r in rows:
        dev = get_device(r["device"])
        pred = rollup(predict_seconds(counts[r["id"]], dev, eff))
        total = pred["total"]
        split, informs = SPLIT[r["id"]]
        out.append({
            "id": r["id"], "split": split, "informs": informs, "device": r["device"], "measured_s": r["seconds"],
            "predicted_s": round(total["total"], 4), "ratio": round(total["total"] / r["seconds"], 3),
            "within_25pct": abs(total["total"] / r["seconds"] - 1) <= 0.25,
            "breakdown_s": {k: round(v, 4) for k, v in total.items()},
            "stages_s": {k: round(v["total"], 4) for k, v in pred.items() if k != "total"},
            "source": f"{r['source']['file']} — {r['source']['table']} — {r['source']['row']}",
            "warm": bool(r.get("warm", True)),
            "workload": " + ".join(f"{t:g} x {ref} ({stage})" for ref, t, stage in recipe(r)),
            "note": r.get("note", ""),
        })
    return out


def render_md(data: dict) -> str:
    e = data["efficiency"]
    oh = data.get("counter_overhead", {})
    dirty = " (working tree had uncommitted changes)" if data.get("dirty") else ""
    lines = ["# Time model: predicted vs measured GPU seconds", "",
             f"Rendered from bench/results/time_model.json by `python bench/fit_time_model.py --report-only` "
             f"(do not edit by hand). Fit: `{data['command']}` at commit {data['commit'][:12]}{dirty}, "
             f"{data['date']}, on {data['machine']}. Counting the {len(data['pieces'])} workloads on fake tensors "
             f"took {data['counting_seconds']:.0f} s; the run that wrote this file took {data['script_seconds']:.0f} s.",
             "",
             "Model (vidrt/memory/timemodel.py): each counted op takes max(FLOPs / (peak x eff), bytes / (DRAM "
             "bandwidth x eff_memory)); the host issues ops at launch_overhead_s each, and device-bound ops hide "
             "a launch_hiding share of the launches after them; transfers take bytes / (PCIe x eff_transfer) + "
             "transfer_latency_s per copy, of which overlap x compute hides under compute. Peaks from "
             "vidrt/memory/devices.py (H100 SXM: 989.4 TFLOPS bf16/fp16 dense, 3350 GB/s, PCIe 5.0 x16 "
             "63.0 GB/s; H200: 989.4, 4800 GB/s, 63.0 GB/s).", "",
             "## Fitted constants", "", "| constant | value | prior | informed by (FIT rows) |", "|---|---|---|---|"]
    informs = data["informed_by"]
    prior = data.get("prior", {}).get("values", {})

    def fmt(k, v):
        if v is None:
            return ""
        return f"{v * 1e6:.1f} µs" if k in LOG_PARAMS else (f"{v:.1f} GB/s" if k == "host_memory_gbs" else f"{v:.3f}")
    for k, v in e.items():
        pv = "assumed, not fitted" if k == "host_memory_gbs" else fmt(k, prior.get(k))
        lines.append(f"| {k} | {fmt(k, v)} | {pv} | {informs.get(k, '')} |")
    rows = data["rows"]
    groups = {name: [r for r in rows if r["split"] == name] for name in ("fit", "holdout", "excluded")}

    def within(rs):
        return f"{sum(r['within_25pct'] for r in rs)}/{len(rs)}"
    warm = [r for r in rows if r["split"] != "excluded" and r.get("warm", True)]
    cold = [r for r in rows if r["split"] != "excluded" and not r.get("warm", True)]
    lines += ["", f"Fit: Nelder-Mead on the mean squared log ratio over the FIT rows (data term "
              f"{data['fit_loss']:.4f}) plus {data.get('prior', {}).get('weight', 0)} x the squared distance to the "
              "prior in the fit's bounded coordinates, which keeps constants the rows cannot tell apart "
              "physical (the FIT rows alone leave the matmul / attention split and the transfer constants "
              "nearly free).", "",
              f"Within ±25 %: FIT {within(groups['fit'])}, HOLDOUT {within(groups['holdout'])}, EXCLUDED "
              f"{within(groups['excluded'])}; of the FIT + HOLDOUT rows, warm {within(warm)}, cold (first call of "
              f"the process or of new shapes) {within(cold)}.", ""]
    wp = data.get("without_prior")
    if wp:
        vals = ", ".join(f"{k} {fmt(k, v)}" for k, v in wp["efficiency"].items() if k != "host_memory_gbs")
        lines += [f"Without the prior the data term falls to {wp['fit_loss']:.4f} and the constants drift to the "
                  f"edges of what the rows allow: {vals}; within ±25 %: FIT {wp['within_25pct']['fit']}, HOLDOUT "
                  f"{wp['within_25pct']['holdout']}.", ""]
    if oh:
        lines += [f"Counter overhead (fake forward, best of 3): Wan 1.3B 2 blocks {oh['wan_2_blocks_plain_s']:.3f} s "
                  f"plain, {oh['wan_2_blocks_counted_s']:.3f} s counted; SD1.5 + motion UNet "
                  f"{oh['animatediff_unet_plain_s']:.3f} s plain, {oh['animatediff_unet_counted_s']:.3f} s counted.", ""]
    lines += ["## Rows", "",
              "| row | split | warm | GPU | measured s | predicted s | ratio | ±25 % | matmul | attention | "
              "elementwise | launch | transfer | stages (s) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b = r["breakdown_s"]
        st = ", ".join(f"{k} {v:.2f}" for k, v in r["stages_s"].items())
        lines.append(f"| {r['id']} | {r['split']} | {'yes' if r.get('warm', True) else 'no'} | {r['device']} | "
                     f"{r['measured_s']:.2f} | {r['predicted_s']:.2f} | {r['ratio']:.2f} | "
                     f"{'yes' if r['within_25pct'] else 'NO'} | {b['matmul']:.2f} | {b['attention']:.2f} | "
                     f"{b['elementwise']:.2f} | {b['launch']:.2f} | {b['transfer']:.2f} | {st} |")
    lines += ["", "Breakdown columns are the model's terms in seconds (matmul includes convolutions; launch is "
              "the time the device waits for the host; transfer is before overlap).", "",
              "## Where rows come from and what they inform", ""]
    for r in rows:
        extra = f" Informs: {r['informs']}." if r["split"] == "fit" else (
            f" Excluded: {r['informs']}." if r["split"] == "excluded" else "")
        note = f" Note: {r['note']}" if r["note"] else ""
        lines.append(f"- **{r['id']}** ({r['split']}): {r['source']}; workload: {r['workload']}.{extra}{note}")
    lines += ["", "## Notes", "", *[f"- {n}" for n in data.get("notes", [])], ""]
    return "\n".join(lines)


NOTES = [
    "Counts: fake CPU tensors under FakeTensorMode; Wan's 30 blocks and UMT5-XXL's 24 layers run as 2 and are "
    "scaled; Wan VAE decodes are extrapolated linearly from 2 and 3 latent frames; scheduler steps, "
    "tokenisation and host-side video postprocessing are not counted. Each workload runs the code of the "
    "commit above, not the code each measurement ran with (the session-1 gpu_check rows predate deferred "
    "up-sampling; the gpu_pipeline Wan rows ran diffusers' tiled_decode, which is what is counted for them).",
    "Policy rows (gpu_policies.md) are 100 Wan calls at 33x480x832 with the blocks scaled by the measured "
    "share of block evaluations; the policies' own arithmetic (forecasts, fp32 histories) is not counted.",
    "Group offloading: block level moves the non-block weights and each block once per denoiser call; leaf "
    "level moves a module's own weights on every call of that module (a sliced UNet calls its spatial layers "
    "once per frame chunk, so it moves them once per chunk) and, because diffusers synchronises the compute "
    "stream after every group, its sections are serial. Applying group offloading pins every streamed tensor "
    "(a host copy per render, kind \"pin\", counted in the setup stage).",
    "Rows that include the first call of a process or of new shapes (cuDNN heuristics, lazy CUDA module "
    "loading, allocator growth, pinning) carry fixed costs the model does not have (warm = no); the model "
    "under-predicts them by 1-7 s.",
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--report-only", action="store_true", help="re-render time_model.md from time_model.json")
    ap.add_argument("--reuse-counts", action="store_true", help="refit from the counts stored in time_model.json")
    ap.add_argument("--counts", help="refit from the counts in this JSON (written by every counting run to "
                                     "$TMPDIR/vidrt_time_model_counts.json)")
    ap.add_argument("--json", default=str(OUT_JSON))
    ap.add_argument("--md", default=str(OUT_MD))
    ap.add_argument("--out", type=Path, default=None, help="write time_model.md (and the .json of a fit) into this "
                                                           "folder instead of --json / --md")
    args = ap.parse_args(argv)
    if args.out is not None:
        args.md = str(args.out / OUT_MD.name)
        if not args.report_only:
            args.json = str(args.out / OUT_JSON.name)
        args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if args.report_only:
        data = json.loads(Path(args.json).read_text())
        Path(args.md).write_text(render_md(data))
        print(f"wrote {args.md}")
        return 0
    rows = json.loads(MEASURED.read_text())["rows"]
    missing = [r["id"] for r in rows if r["id"] not in SPLIT]
    if missing:
        raise SystemExit(f"rows without a FIT/HOLDOUT split: {missing}")
    needed = sorted({ref.split(":")[0] for r in rows for ref, _, _ in recipe(r)})
    cache = Path(tempfile.gettempdir()) / "vidrt_time_model_counts.json"
    if args.reuse_counts or args.counts:
        old = json.loads(Path(args.counts or args.json).read_text())
        pieces = {k: Counts.from_dict(v) for k, v in old["pieces"].items()}
        piece_secs = old["piece_seconds"]
        counting = old["counting_seconds"]
        todo = [n for n in needed if n not in pieces]
        if todo:
            print(f"counting {len(todo)} workloads missing from the stored counts ...", flush=True)
            more, more_secs = count_pieces(todo)
            pieces.update(more)
            piece_secs.update(more_secs)
    else:
        print(f"counting {len(needed)} workloads on fake tensors ...", flush=True)
        t0 = time.perf_counter()
        pieces, piece_secs = count_pieces(needed)
        counting = time.perf_counter() - t0
        cache.write_text(json.dumps({"pieces": {k: v.to_dict() for k, v in pieces.items()},
                                     "piece_seconds": piece_secs, "counting_seconds": round(counting, 1)}))
    counts = {r["id"]: row_counts(r, pieces) for r in rows}
    overhead = counter_overhead()
    print(f"counter overhead: {overhead}", flush=True)
    print("fitting ...", flush=True)
    eff, loss = fit(rows, counts)
    free, free_loss = fit(rows, counts, prior_weight=0.0)      # for the report: what the rows alone say
    free_rows = table_rows(rows, counts, free)
    informed: dict[str, list[str]] = {}
    for rid, (split, what) in SPLIT.items():
        if split == "fit":
            for p in PARAMS:
                if p in what:
                    informed.setdefault(p, []).append(rid)
    data = {
        "command": "python bench/fit_time_model.py" + (" --reuse-counts" if args.reuse_counts else ""),
        "commit": rio.git_commit(), "dirty": rio.git_dirty(("vidrt", "bench/fit_time_model.py")),
        "machine": machine(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "counting_seconds": round(counting, 1), "script_seconds": 0.0,
        "efficiency": eff.to_dict(), "fit_loss": round(loss, 5), "counter_overhead": overhead,
        "prior": {"values": PRIOR.to_dict(), "weight": PRIOR_WEIGHT},
        "without_prior": {"efficiency": free.to_dict(), "fit_loss": round(free_loss, 5),
                          "within_25pct": {split: f"{sum(r['within_25pct'] for r in free_rows if r['split'] == split)}/"
                                                  f"{sum(r['split'] == split for r in free_rows)}"
                                           for split in ("fit", "holdout", "excluded")}},
        "informed_by": {k: ", ".join(v) for k, v in informed.items()},
        "rows": table_rows(rows, counts, eff), "notes": NOTES, "piece_seconds": piece_secs,
        "pieces": {k: v.to_dict() for k, v in pieces.items()},
    }
    data["script_seconds"] = round(time.perf_counter() - started, 1)
    Path(args.json).write_text(json.dumps(data, indent=1) + "\n")
    Path(args.md).write_text(render_md(data))
    print(render_md(data))
    print(f"wrote {args.json} and {args.md} in {data['script_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
