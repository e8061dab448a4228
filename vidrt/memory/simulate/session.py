"""One simulated session: the fake pipeline built once, its stages run under the tracker's dispatch counter.

The denoise stage runs once per slicing variant (`denoise#i`) and the decode stage once per tiling variant
(`vae_decode#j`), so the planner measures every candidate in one session; a single variant keeps the plain
stage names. What each stage runs is the adapter's script (`adapter.simulate_stages`). The same session
counts each stage's work (vidrt.memory.cost: FLOPs, bytes, launches; the layers a reduced model left out are
added by scaling its built ones) and the denoiser calls it made, which vidrt.memory.pricing turns into seconds.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

import vidrt.engine.distributed as vdist
from vidrt.core.dtypes import torch_dtype
from vidrt.config.checks import check_token_multiple, input_frames
from vidrt.core.tensors import module_bytes
from vidrt.engine.distributed.comm import simulated_context
from vidrt.engine.distributed.shard import rank_weight_bytes
from vidrt.core.windows import window_plan
from vidrt.engine.slicing import SlicingConfig, disable_slicing, enable_slicing
from vidrt.engine.vae import VaeConfig, enable_vae_settings
from vidrt.memory.cost import CostCounter, Counts
from vidrt.memory.settings import MemorySettings
from vidrt.memory.simulate.fake import KEEP_LAYERS, build_modules
from vidrt.memory.target import accelerator
from vidrt.engine.offload import offload_granularity
from vidrt.memory.simulate.placement import (ENCODERS, GRANULARITIES, StoredWeights, account,
                                            file_stored_weights, resident_under_group_offload, stored_weights,
                                            stream_groups_under_group_offload)
from vidrt.memory.tracker import MemoryTracker
from vidrt.models import get_adapter
from vidrt.models.known import components_from_pipe, resolve_components
from vidrt.models.loading import pixels_per_token_of
from vidrt.models.simulation import SimParams
from vidrt.models.single_file import SingleFile, read_single_file, single_file_kind


@dataclass
class Session:
    """Raw results of one simulated session (tracker stages before parameter placement; each stage also
    names the `models` that run in it)."""

    family: str
    dtype: str
    frames: int
    height: int
    width: int
    device: str
    stages: list[dict[str, Any]]
    params: dict[str, int]
    group: dict[str, int]
    modules: list[dict[str, Any]]
    timeline: list[list[Any]]
    distributed: dict[str, Any] | None = None
    shard: dict[str, int] = field(default_factory=dict)   # per-rank weight bytes under offload "shard"
    counts: Counts = field(default_factory=Counts)         # work per stage section (vidrt.memory.cost)
    denoise_calls: dict[str, int] = field(default_factory=dict)   # denoiser calls per stage section
    # per offload granularity (auto / block / leaf): accelerator bytes of each model, copies per call
    windows: int = 1                                     # context windows per denoiser call (long videos)
    group_by: dict[str, dict[str, int]] = field(default_factory=dict)
    stream_groups_by: dict[str, dict[str, int]] = field(default_factory=dict)
    auto_levels: dict[str, str] = field(default_factory=dict)     # what "auto" granularity picks, per model
    stored: StoredWeights | None = None   # the denoiser under fp8 weight storage, or as its GGUF file stores it
    twins: tuple[str, ...] = ()           # further experts stored as the denoiser is (Wan 2.2 A14B under fp8)
    # further experts stored as their own GGUF files store them (`model.weights_2`)
    own_files: dict[str, StoredWeights] = field(default_factory=dict)

    def _stored(self) -> dict[str, StoredWeights]:
        """Each denoiser's stored weights under a non-native `weights` setting."""
        shared = {n: self.stored for n in (self.stored.model, *self.twins)} if self.stored is not None else {}
        return {**shared, **self.own_files}

    def leaf_level(self, model: str, granularity: str = "auto") -> bool:
        return granularity == "leaf" or (granularity == "auto" and self.auto_levels.get(model) != "block_level")

    def resident(self, granularity: str = "auto", weights: str = "native") -> dict[str, int]:
        """Accelerator bytes of each model under group offloading, the denoiser's as `weights` stores them."""
        group = self.group_by.get(granularity, self.group)
        if weights == "native" or self.stored is None:
            return group
        return dict(group, **{n: s.resident[granularity] for n, s in self._stored().items()})

    def params_for(self, weights: str = "native") -> dict[str, int]:
        """Bytes of each model's weights, the denoiser's as `weights` stores them."""
        if weights == "native" or self.stored is None:
            return self.params
        return dict(self.params, **{n: s.total_bytes for n, s in self._stored().items()})

    def upcast(self, weights: str = "native") -> dict[str, int]:
        """Bytes a model holds on top while it runs: one layer upcast from fp8 storage."""
        if weights == "native" or self.stored is None:
            return {}
        return {n: s.upcast_bytes for n, s in self._stored().items()}

    def place(self, settings: MemorySettings, stages: list[dict[str, Any]] | None = None):
        """`placement.account` of these stages (default: all the session's) under `settings`: (stages, accelerator
        peak, host peak)."""
        return account(self.stages if stages is None else stages, self.params_for(settings.weights),
                       self.resident(settings.granularity, settings.weights), settings, self.device, self.shard,
                       self.upcast(settings.weights))

    def stream_groups(self, granularity: str = "auto") -> dict[str, int]:
        return self.stream_groups_by.get(granularity, {})


class _Recorder:
    """The tracker the stage scripts see: each of its stages is also a cost section."""

    def __init__(self, tracker: MemoryTracker, cost: CostCounter):
        self._tracker, self._cost = tracker, cost

    @contextlib.contextmanager
    def stage(self, name: str, params: Any = None):
        with self._tracker.stage(name, params=params), self._cost.section(name):
            yield self

    def __getattr__(self, name: str):
        return getattr(self._tracker, name)


def _count_calls(module: nn.Module, cost: CostCounter, calls: dict[str, int]) -> list:
    def pre(*_):
        stage = cost.current.split("/")[0]
        calls[stage] = calls.get(stage, 0) + 1
    return [module.register_forward_pre_hook(pre)]


def _full_layers(counts: Counts, repeated: dict[str, tuple[list, int]]) -> Counts:
    """The work of the layers a reduced model left out: its built layers' sections scaled to the real count."""
    for section in counts.sections():
        tail = section.rsplit("/", 1)[-1]
        if tail.startswith("layers:") and tail[len("layers:"):] in repeated:
            layers, full = repeated[tail[len("layers:"):]]
            counts = counts.scaled(full / len(layers), prefix=section)
    return counts


def long_video(config, adapter, frames: int, accel: str, with_image: bool) -> tuple[int, int, int]:
    """(windows per call, frames of one window's call, frames of the loop tensors on the accelerator) as the
    runner applies them: context windows beyond the native length, the loop on the host for text-to-video on
    an accelerator unless `long.loop_on_host` says otherwise."""
    long = getattr(config, "long", None)
    native = adapter.spec.native_frame_count(config.model.path)
    if long is None and frames <= native:
        return 1, frames, frames
    plan = window_plan(adapter.spec, frames, native, getattr(long, "window", None), getattr(long, "overlap", None))
    if plan.total <= plan.window:
        return 1, frames, frames
    window = (plan.window - 1) * adapter.spec.temporal_compression + 1
    wanted = getattr(long, "loop_on_host", None)
    on_host = bool(wanted) or (wanted is None and accel != "cpu" and not with_image)
    return plan.windows, window, window if on_host else frames


def denoiser_file(config, key: str = "weights") -> SingleFile | None:
    """The GGUF file `model.weights` (or `model.weights_2`, a second expert's) names (its header: true bytes per
    tensor), or None (no file, or a full-precision safetensors file, which loads as the native weights do)."""
    path = getattr(getattr(config, "model", None), key, None)
    if not path or single_file_kind(path) != "gguf":
        return None
    return read_single_file(path)


def frame_count(config, adapter) -> int:
    """The frames a render of `config` makes: `frames`, else the input video's (video-to-video), else the
    model's native length."""
    return adapter.spec.render_frames(getattr(config, "frames", None),
                                      adapter.spec.native_frame_count(config.model.path), input_frames(config))


def run_session(config, slicing_variants: list[MemorySettings], tiling_variants: list[bool], *, pipe=None,
                track_modules: bool = True, top_n: int = 10, timeline: bool = False,
                exact_layers: bool = False, fast: bool = False, ranks: int = 1, mode: str | None = None) -> Session:
    """Build the fake pipeline once, run text/image encoding once, then the denoise stage once per slicing
    variant and the decode stage once per tiling variant. `fast` (the planner) keeps one repeated layer
    instead of two and lets the scripts take cheaper paths with the same peak (Wan: the two CFG calls as one
    call with the other prediction held)."""
    adapter = get_adapter(config.model.family)
    dtype_name = str(getattr(config.model, "dtype", "float32"))
    dtype = torch_dtype(dtype_name)
    comps = components_from_pipe(pipe) if pipe is not None else resolve_components(config)
    if "vae" in comps and adapter.denoiser_attr in comps:
        check_token_multiple(config, adapter.spec, pixels_per_token_of(comps["vae"].config,
                                                                       comps[adapter.denoiser_attr].config))
    frames, height, width = frame_count(config, adapter), int(config.height), int(config.width)
    guidance = float(getattr(config, "guidance", 5.0))
    with_image = bool(getattr(config, "image", None)) or adapter.spec.needs_image
    accel = accelerator(config)
    windows, window_frames, loop_frames = long_video(config, adapter, frames, accel, with_image)

    fake = FakeTensorMode(allow_non_fake_inputs=True)
    with fake, torch.no_grad():
        mods = build_modules(comps, adapter, dtype, reduce=not exact_layers, keep=1 if fast else KEEP_LAYERS)
        den, vae = mods["denoiser"], mods["vae"]

        def slicer(st: MemorySettings):
            def setup():
                disable_slicing(den)
                if st.slicing:
                    enable_slicing(den, SlicingConfig(st.chunk_frames, st.chunk_tokens, st.chunk_positions,
                                                      accelerator=accel != "cpu"))
            return setup

        def tiler(on: bool):
            def setup():
                enable_vae_settings(vae, VaeConfig("on" if on else "off", height, width))
            return setup

        den_variants = [slicer(v) for v in slicing_variants]
        dec_variants = [tiler(v) for v in tiling_variants]
        if len(den_variants) == 1:
            den_variants[0]()
            den_variants = None
        if len(dec_variants) == 1:
            dec_variants[0]()
            dec_variants = None
        named = {(adapter.denoiser_attr if k == "denoiser" else k): v for k, v in mods.items()
                 if isinstance(v, nn.Module)}
        tracker = MemoryTracker(accel, count_device="cpu", track_modules=named if track_modules else False,
                                top_n=top_n, timeline=timeline)
        layout = None
        holder = SimpleNamespace(**{adapter.denoiser_attr: den}, encode_prompt=lambda *a, **k: None)
        if ranks > 1:   # rank 0 of `ranks`: the real hooks, collectives that allocate and move nothing
            state = vdist.enable_distributed(holder, simulated_context(ranks),
                                             vdist.DistributedConfig.from_env(guidance=guidance, mode=mode),
                                             adapter=adapter)
            layout = state.described if state is not None else None
        cost = CostCounter()
        calls: dict[str, int] = {}
        handles = _count_calls(den, cost, calls)
        repeated = mods["_repeated"]
        for name, (layers, _) in repeated.items():
            for layer in layers:
                handles += cost.hook_module(layer, f"layers:{name}")
        try:
            with tracker, cost:
                adapter.simulate_stages(_Recorder(tracker, cost), mods, SimParams(
                    frames=frames, height=height, width=width, cfg=guidance > 1.0, guidance=guidance, dtype=dtype,
                    with_image=with_image, text_len=adapter.simulated_text_len(comps, mods, pipe),
                    denoise_variants=den_variants, decode_variants=dec_variants, fast_cfg=fast,
                    denoise_frames=window_frames, loop_frames=loop_frames,
                    video_input=bool(getattr(config, "input_video", None)),
                    per_token_timesteps=bool(comps.get("_pipeline") and
                                             comps["_pipeline"].config.get("expand_timesteps"))))
        finally:
            for handle in handles:
                handle.remove()
            if layout is not None:
                vdist.disable_distributed(holder, adapter)
        extra = mods["_extra_params"]
        params = {k: module_bytes([v]) + extra.get(k, 0) for k, v in named.items()}
        group_by = {g: resident_under_group_offload(named, params, g) for g in GRANULARITIES}
        group = group_by["auto"]
        streams_by = {g: stream_groups_under_group_offload(named, params, mods["_repeated"], g) for g in GRANULARITIES}
        levels = {k: offload_granularity(v, params[k]) for k, v in named.items() if k not in ENCODERS + ("vae",)}
        den_name = adapter.denoiser_attr
        file = denoiser_file(config)
        stored = (file_stored_weights(den_name, den, params[den_name], file) if file is not None else
                  stored_weights(den_name, den, params[den_name], list(repeated.get(den_name, ((), 0))[0])))
        file_2 = denoiser_file(config, "weights_2")
        expert = adapter.spec.second_expert
        own_files = ({expert: file_stored_weights(expert, named[expert], params[expert], file_2)}
                     if file_2 is not None and expert in named else {})
        shard = {}
        if ranks > 1:   # FSDP2 over the ranks (vidrt.engine.distributed.shard)
            shard[den_name] = rank_weight_bytes(den, ranks, params[den_name])
    stage_models = {st.name: tuple(n for n in st.modules if n in params) for st in adapter.stages}
    alternate = {st.name: tuple(n for n in st.alternate if n in params) for st in adapter.stages}
    stages = [dict(s, models=stage_models.get(s["name"].partition("#")[0], ()),
                   **({"alternate": alt} if len(alt := alternate.get(s["name"].partition("#")[0], ())) > 1 else {}))
              for s in tracker.stages]
    return Session(adapter.family, dtype_name, frames, height, width, accel, stages, params, group,
                   tracker.modules, [[round(t, 6), b, s] for t, b, s in tracker.timeline] if timeline else [],
                   layout, shard, _full_layers(cost.counts, repeated), calls, windows, group_by, streams_by, levels,
                   stored, (expert,) if file is None and expert in named else (), own_files)
