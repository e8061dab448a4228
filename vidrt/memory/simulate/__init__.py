"""Full-size memory simulation without allocating: `vidrt.simulate(config) -> SimReport`.

The real model classes are built at full size under `FakeTensorMode` with fake **CPU** tensors (not the meta
device and not fake CUDA tensors: there SDPA falls back to math attention and a Wan forward "needs" 97 GiB;
CPU SDPA takes the flash path like a GPU would). The pipeline's stages then run for real on those fake
tensors — text encoder forward (twice with classifier-free guidance), image encoder + VAE encode for I2V,
one denoising step with CFG the way each pipeline does it, VAE decode — under the same dispatch counter the
real tracker uses. The family's adapter says how (vidrt.models: known.py for the configs, the adapters'
simulation hooks and stage scripts).

Parameters are counted from the modules; where they live (accelerator or host) follows the memory
settings: offload none|model|group, text encoder on the accelerator or the CPU, slicing, VAE tiling.
`peak_bytes` is the accelerator's peak; host memory (a text encoder kept on the CPU, offloaded weights)
is `host_peak_bytes`.

fake.py builds the modules, session.py runs the stages, placement.py places the weights, long.py simulates a
long render's denoising loop.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from vidrt.core.units import format_bytes
from vidrt.memory.report import stage_table
from vidrt.memory.settings import MemorySettings, settings_from_config
from vidrt.memory.devices import GpuSpec
from vidrt.memory.pricing import price, run_shape
from vidrt.memory.simulate.session import Session, run_session
from vidrt.memory.target import resolve_gpu
from vidrt.memory.timemodel import load_efficiency
from vidrt.models import get_adapter


@dataclass
class SimReport:
    model: str
    family: str
    dtype: str
    frames: int
    height: int
    width: int
    settings: dict[str, Any]
    peak_bytes: int
    host_peak_bytes: int
    stages: list[dict[str, Any]]
    modules: list[dict[str, Any]]
    params: dict[str, int]
    device: str = "cuda"
    simulated: bool = True
    seconds: float = 0.0
    timeline: list[list[Any]] = field(default_factory=list)
    distributed: dict[str, Any] | None = None   # the layout of a per-rank prediction (`ranks` > 1)
    device_model: str | None = None             # the GPU model the seconds are predicted for
    predicted_seconds: dict[str, float] = field(default_factory=dict)   # per stage, per step, total

    def stage(self, name: str) -> dict[str, Any]:
        for s in self.stages:
            if s["name"] == name:
                return s
        raise KeyError(name)

    def module(self, name: str) -> int:
        for m in self.modules:
            if m["name"] == name:
                return m["activation_bytes"]
        raise KeyError(name)

    def to_dict(self, timeline: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not timeline:
            d.pop("timeline")
        return d

    def table(self):
        title = (f"simulated {self.model} {self.frames}x{self.height}x{self.width} {self.dtype} on {self.device} "
                 f"— {MemorySettings(**self.settings).describe()}")
        if self.device_model:
            title += (f" — predicted on {self.device_model}: {self.predicted_seconds['total']:.1f} s, "
                      f"{self.predicted_seconds['denoise_step']:.2f} s per step")
        if self.distributed:
            d = self.distributed
            title += (f" — rank 0 of {d['world']} GPUs (CFG {d['cfg_parallel']} x "
                      f"{'frames' if d.get('frame_parallel') else 'sequence'} {d['sequence_parallel']}; "
                      f"weights {'sharded' if self.settings.get('offload') == 'shard' else 'replicated'})")
        return stage_table(self.stages, self.modules, peak_bytes=self.peak_bytes,
                           host_peak_bytes=self.host_peak_bytes, title=title)

    def __str__(self) -> str:
        return (f"peak {format_bytes(self.peak_bytes)} on {self.device}, host {format_bytes(self.host_peak_bytes)} "
                f"({self.model} {self.frames}x{self.height}x{self.width})")


def simulate(config, settings: MemorySettings | dict | None = None, *, pipe=None, track_modules: bool = True,
             top_n: int = 10, timeline: bool = False, exact_layers: bool = False, ranks: int = 1,
             mode: str | None = None, gpu: str | GpuSpec | None = None) -> SimReport:
    """Simulate `config` at full size without allocating. `settings` overrides the config's memory keys;
    `pipe` takes component configs from an existing pipeline (e.g. a tiny one) instead of `model.path`.
    Repeated identical layers run twice, not N times (same peak, see vidrt.models.known.REPEATED_LAYERS)
    unless `exact_layers`. `ranks` > 1: the peak of rank 0 of a torchrun over that many GPUs (the layout
    vidrt.engine.distributed would choose, or `mode`): the denoiser runs through the real distributed hooks
    with collectives that allocate their results and move nothing; weights are replicated on every rank.
    `gpu`: the GPU model the stages' seconds are predicted for (default: the GPU present, else the planner's
    default model)."""
    started = time.perf_counter()
    if settings is None:
        settings = settings_from_config(config)
    elif isinstance(settings, dict):
        settings = MemorySettings(**settings)
    sess = run_session(config, [settings], [settings.vae_tiling], pipe=pipe, track_modules=track_modules,
                       top_n=top_n, timeline=timeline, exact_layers=exact_layers, ranks=ranks, mode=mode)
    stages, peak, host_peak = sess.place(settings)
    spec = resolve_gpu(gpu)
    adapter = get_adapter(config.model.family)
    shape = run_shape(config, adapter, sess.frames, sess.windows, pipe)
    seconds = price(sess, settings, "denoise", "vae_decode", shape, spec, load_efficiency(), adapter.denoiser_attr)
    for s in stages:
        s["predicted_seconds"] = round(seconds.get(s["name"], 0.0), 3)
    return SimReport(
        model=str(config.model.path), family=sess.family, dtype=sess.dtype, frames=sess.frames,
        height=sess.height, width=sess.width, settings=settings.to_dict(), peak_bytes=peak,
        host_peak_bytes=host_peak, stages=stages, modules=sess.modules, params=sess.params_for(settings.weights),
        device=sess.device,
        seconds=round(time.perf_counter() - started, 3), timeline=sess.timeline, distributed=sess.distributed,
        device_model=spec.id, predicted_seconds={k: round(v, 3) for k, v in seconds.items()},
    )


__all__ = ["MemorySettings", "Session", "SimReport", "run_session", "simulate"]
