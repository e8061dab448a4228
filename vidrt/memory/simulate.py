"""Full-size memory simulation without allocating: `vidrt.simulate(config) -> SimReport`.

The real model classes are built at full size under `FakeTensorMode` with fake **CPU** tensors (not the meta
device and not fake CUDA tensors: there SDPA falls back to math attention and a Wan forward "needs" 97 GiB;
CPU SDPA takes the flash path like a GPU would). The pipeline's stages then run for real on those fake
tensors — text encoder forward (twice with classifier-free guidance), image encoder + VAE encode for I2V,
one denoising step with CFG the way each pipeline does it (Wan: two denoiser calls; AnimateDiff and
I2VGen-XL: one call on a batch of 2), VAE decode — under the same dispatch counter the real tracker uses.

Parameters are counted from the modules; where they live (accelerator or host) follows the memory
settings: offload none|model|group, text encoder on the accelerator or the CPU, slicing, VAE tiling.
`peak_bytes` is the accelerator's peak; host memory (a text encoder kept on the CPU, offloaded weights)
is `host_peak_bytes`.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from vidrt.core.dtypes import torch_dtype
from vidrt.core.errors import VidrtError
from vidrt.memory.settings import MemorySettings, settings_from_config
from vidrt.core.tensors import module_bytes
from vidrt.core.units import format_bytes
from vidrt.memory.report import stage_table
from vidrt.memory.tracker import MemoryTracker


KNOWN_MODELS = (
    "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
    "Wan-AI/Wan2.1-T2V-14B-Diffusers",
    "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers",
    "ali-vilab/i2vgen-xl",
    "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "guoyww/animatediff-motion-adapter-v1-5-2",
)
DEFAULT_MOTION_ADAPTER = "guoyww/animatediff-motion-adapter-v1-5-2"

STAGE_MODULES = {
    "text_encode": ("text_encoder",),
    "image_encode": ("image_encoder", "vae"),
    "denoise": ("denoiser",),
    "vae_decode": ("vae",),
}


# ---- component configs -------------------------------------------------------------------------------
@dataclass
class Component:
    library: str       # diffusers | transformers
    class_name: str
    config: Any        # dict (from json) or a transformers config object


def known_dir(model_id: str) -> Path | None:
    if model_id not in KNOWN_MODELS:
        return None
    base = resources.files("vidrt.models") / "known_configs" / model_id.replace("/", "--")
    return Path(str(base))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise VidrtError(f"model.path: cannot read {path}: {exc}") from None


def components_from_folder(folder: Path) -> dict[str, Component]:
    index = _read_json(folder / "model_index.json")
    out = {}
    for name, value in index.items():
        if name.startswith("_") or not isinstance(value, list) or len(value) != 2 or value[0] is None:
            continue
        cfg_path = folder / name / "config.json"
        if not cfg_path.is_file():
            continue
        lib, cls = value
        cfg = _read_json(cfg_path)
        out[name] = Component("diffusers" if lib == "diffusers" else "transformers", cfg.get("_class_name", cls)
                              if lib == "diffusers" else cls, cfg)
    out["_pipeline"] = Component("diffusers", index.get("_class_name", ""), {})
    tok = folder / "tokenizer" / "tokenizer_config.json"
    if tok.is_file():
        max_len = _read_json(tok).get("model_max_length")
        if isinstance(max_len, int) and 0 < max_len < 10**6:
            out["_tokenizer"] = Component("transformers", "tokenizer", {"model_max_length": max_len})
    return out


def components_from_pipe(pipe) -> dict[str, Component]:
    out = {}
    for name, mod in pipe.components.items():
        if not isinstance(mod, nn.Module):
            continue
        lib = "transformers" if type(mod).__module__.startswith("transformers") else "diffusers"
        cfg = mod.config if lib == "transformers" else dict(mod.config)
        out[name] = Component(lib, type(mod).__name__, cfg)
    out["_pipeline"] = Component("diffusers", type(pipe).__name__, {})
    return out


def _adapter_dir(motion_adapter: str) -> dict:
    kd = known_dir(motion_adapter)
    path = kd if kd is not None else Path(motion_adapter)
    if not (path / "config.json").is_file():
        raise VidrtError(f"model.motion_adapter: unknown motion adapter {motion_adapter!r} for a dry run "
                         f"(known: {DEFAULT_MOTION_ADAPTER}, or a local folder with config.json)")
    return _read_json(path / "config.json")


def resolve_components(config) -> dict[str, Component]:
    model = config.model
    path = str(model.path)
    kd = known_dir(path)
    if kd is not None:
        comps = components_from_folder(kd)
    elif (Path(path) / "model_index.json").is_file():
        comps = components_from_folder(Path(path))
    else:
        known = ", ".join(m for m in KNOWN_MODELS if "motion-adapter" not in m)
        raise VidrtError(f"model.path: {path!r} is not a known model id or a local pipeline folder; "
                         f"known ids for dry runs: {known}")
    if model.family == "animatediff" and comps.get("unet") and comps["unet"].class_name == "UNet2DConditionModel":
        comps["motion_adapter"] = Component("diffusers", "MotionAdapter",
                                            _adapter_dir(getattr(model, "motion_adapter", None) or DEFAULT_MOTION_ADAPTER))
    return comps


def _clean(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if not k.startswith("_") and k not in ("architectures",)}


def build_module(comp: Component) -> nn.Module:
    if comp.library == "diffusers":
        import diffusers

        cls = getattr(diffusers, comp.class_name)
        return cls.from_config(_clean(comp.config))
    import transformers

    cls = getattr(transformers, comp.class_name)
    cfg = comp.config
    if isinstance(cfg, dict):
        cfg = cls.config_class(**_clean(cfg))
    return cls(cfg)


# ---- report ------------------------------------------------------------------------------------------
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


# ---- the simulated run ---------------------------------------------------------------------------------
def _accelerator(config) -> str:
    devices = list(getattr(config, "devices", None) or ["auto"])
    first = str(devices[0])
    return "cpu" if first == "cpu" else (first if first.startswith("cuda") else "cuda")


def _group_resident(mod: nn.Module, total_bytes: int) -> int:
    """Resident bytes of a denoiser under vidrt's group offloading (vidrt.engine.offload): block level keeps what
    is outside the outermost blocks plus two blocks (the one running and the one being prefetched); leaf
    level keeps two leaves. `total_bytes` counts the layers a reduced simulation model dropped."""
    from vidrt.engine.offload import offload_granularity
    from vidrt.models.layout import stream_units

    if offload_granularity(mod, total_bytes) == "leaf_level":
        return _leaf_resident(mod)
    sizes = sorted((module_bytes([b]) for b in stream_units(mod)), reverse=True)
    return module_bytes([mod]) - sum(sizes) + sum(sizes[:2])


def _frames(config, adapter) -> int:
    frames = getattr(config, "frames", None)
    return int(frames) if frames else adapter.spec.native_frame_count(config.model.path)


def simulate(config, settings: MemorySettings | dict | None = None, *, pipe=None, track_modules: bool = True,
             top_n: int = 10, timeline: bool = False, exact_layers: bool = False, ranks: int = 1,
             mode: str | None = None) -> SimReport:
    """Simulate `config` at full size without allocating. `settings` overrides the config's memory keys;
    `pipe` takes component configs from an existing pipeline (e.g. a tiny one) instead of `model.path`.
    Repeated identical layers run twice, not N times (same peak, see REPEATED) unless `exact_layers`.
    `ranks` > 1: the peak of rank 0 of a torchrun over that many GPUs (the layout vidrt.engine.distributed would
    choose, or `mode`): the denoiser runs through the real distributed hooks with collectives that allocate
    their results and move nothing; weights are replicated on every rank."""
    started = time.perf_counter()
    if settings is None:
        settings = settings_from_config(config)
    elif isinstance(settings, dict):
        settings = MemorySettings(**settings)
    sess = run_session(config, [settings], [settings.vae_tiling], pipe=pipe, track_modules=track_modules,
                       top_n=top_n, timeline=timeline, exact_layers=exact_layers, ranks=ranks, mode=mode)
    stages, peak, host_peak = _account(sess.stages, sess.params, sess.group, settings, sess.device, sess.shard)
    return SimReport(
        model=str(config.model.path), family=sess.family, dtype=sess.dtype, frames=sess.frames,
        height=sess.height, width=sess.width, settings=settings.to_dict(), peak_bytes=peak,
        host_peak_bytes=host_peak, stages=stages, modules=sess.modules, params=sess.params, device=sess.device,
        seconds=round(time.perf_counter() - started, 3), timeline=sess.timeline, distributed=sess.distributed,
    )


@dataclass
class Session:
    """Raw results of one simulated session (tracker stages before parameter placement)."""

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


def run_session(config, slicing_variants: list[MemorySettings], tiling_variants: list[bool], *, pipe=None,
                track_modules: bool = True, top_n: int = 10, timeline: bool = False,
                exact_layers: bool = False, fast: bool = False, ranks: int = 1, mode: str | None = None) -> Session:
    """Build the fake pipeline once, run text/image encoding once, then the denoise stage once per slicing
    variant (`denoise#i`) and the decode stage once per tiling variant (`vae_decode#j`); a single variant
    keeps the plain stage names. `fast` (the planner) keeps one repeated layer instead of two and runs
    Wan's two CFG calls as one call with the other prediction held."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from vidrt.models import get_adapter

    adapter = get_adapter(config.model.family)
    dtype_name = str(getattr(config.model, "dtype", "float32"))
    dtype = torch_dtype(dtype_name)
    comps = components_from_pipe(pipe) if pipe is not None else resolve_components(config)
    frames, height, width = _frames(config, adapter), int(config.height), int(config.width)
    guidance = float(getattr(config, "guidance", 5.0))
    with_image = bool(getattr(config, "image", None)) or adapter.spec.needs_image
    accel = _accelerator(config)
    from vidrt.engine.slicing import SlicingConfig, disable_slicing, enable_slicing

    fake = FakeTensorMode(allow_non_fake_inputs=True)
    with fake, torch.no_grad():
        mods = _build(comps, adapter, dtype, reduce=not exact_layers, keep=1 if fast else KEEP_LAYERS)
        den, vae = mods["denoiser"], mods["vae"]

        def slicer(st: MemorySettings):
            def setup():
                disable_slicing(den)
                if st.slicing:
                    enable_slicing(den, SlicingConfig(st.chunk_frames, st.chunk_tokens, st.chunk_positions))
            return setup

        from vidrt.engine.vae import VaeConfig, enable_vae_settings

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
        runner = _FAMILY_RUN[adapter.family]
        layout = None
        holder = SimpleNamespace(**{adapter.denoiser_attr: den}, encode_prompt=lambda *a, **k: None)
        if ranks > 1:   # rank 0 of `ranks`: the real hooks, collectives that allocate and move nothing
            import vidrt.engine.distributed as vdist
            from vidrt.engine.distributed.comm import simulated_context

            state = vdist.enable_distributed(holder, simulated_context(ranks),
                                             vdist.DistributedConfig.from_env(guidance=guidance, mode=mode),
                                             adapter=adapter)
            layout = state.described if state is not None else None
        try:
            with tracker:
                runner(tracker, mods, adapter, SimpleNamespace(
                    frames=frames, height=height, width=width, cfg=guidance > 1.0, guidance=guidance, dtype=dtype,
                    with_image=with_image, text_len=_text_len(comps, mods, pipe), denoise_variants=den_variants,
                    decode_variants=dec_variants, fast_cfg=fast))
        finally:
            if layout is not None:
                vdist.disable_distributed(holder, adapter)
        extra = mods["_extra_params"]
        params = {k: module_bytes([v]) + extra.get(k, 0) for k, v in named.items()}
        group = {k: (_leaf_resident(v) if k in ENCODERS else params[k] if k == "vae" else
                     _group_resident(v, params[k]))
                 for k, v in named.items()}
        shard = {}
        if ranks > 1:   # FSDP2 over the ranks (vidrt.engine.distributed.shard)
            from vidrt.engine.distributed.shard import rank_weight_bytes

            den_name = adapter.denoiser_attr
            shard[den_name] = rank_weight_bytes(den, ranks, params[den_name])
    return Session(adapter.family, dtype_name, frames, height, width, accel, tracker.stages, params, group,
                   tracker.modules, [[round(t, 6), b, s] for t, b, s in tracker.timeline] if timeline else [],
                   layout, shard)


def _text_len(comps, mods, pipe) -> int:
    te = mods["text_encoder"]
    cfg = te.config
    if hasattr(cfg, "max_position_embeddings") and "CLIP" in type(te).__name__:
        return int(cfg.max_position_embeddings)
    if pipe is not None and getattr(pipe, "tokenizer", None) is not None:
        return int(min(512, pipe.tokenizer.model_max_length or 512))
    if "_tokenizer" in comps:  # a local folder's tokenizer (the Wan pipeline pads to min(512, this))
        return int(min(512, comps["_tokenizer"].config["model_max_length"]))
    return 512


def cast_(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """`module.to(dtype)` for fake tensors (whose `.to` path cannot swap tensors): replace floating
    parameters and buffers in place, keeping shared (tied) tensors shared."""
    memo: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(old) -> (old kept alive, new)
    for mod in module.modules():
        for table, make in ((mod._parameters, lambda t: nn.Parameter(t.detach().to(dtype), requires_grad=False)),
                            (mod._buffers, lambda t: t.to(dtype))):
            for name, t in list(table.items()):
                if t is None or not t.is_floating_point() or t.dtype == dtype:
                    continue
                if id(t) not in memo:
                    memo[id(t)] = (t, make(t))
                table[name] = memo[id(t)][1]
    return module.eval().requires_grad_(False)


# Repeated identical layers: (config key, attribute path of the layer list). A forward's activation peak is
# reached inside one layer with the same tensors carried between layers, so two layers give the same peak
# as forty; the other layers' parameters are added from one layer's size. Makes simulation ~15x faster.
REPEATED = {
    "WanTransformer3DModel": ("num_layers", "blocks"),
    "UMT5EncoderModel": ("num_layers", "encoder.block"),
    "T5EncoderModel": ("num_layers", "encoder.block"),
}
KEEP_LAYERS = 2


def _reduced(comp: Component, keep: int = KEEP_LAYERS) -> tuple[Component, int]:
    rule = REPEATED.get(comp.class_name)
    if rule is None:
        return comp, 0
    key = rule[0]
    cfg = comp.config
    full = cfg.get(key) if isinstance(cfg, dict) else getattr(cfg, key, None)
    if not isinstance(full, int) or full <= keep:
        return comp, 0
    if isinstance(cfg, dict):
        cfg = dict(cfg, **{key: keep})
    else:
        cfg = type(cfg)(**dict(cfg.to_dict(), **{key: keep}))
    return Component(comp.library, comp.class_name, cfg), full - keep


def _layer_list(mod: nn.Module, path: str):
    for part in path.split("."):
        mod = getattr(mod, part)
    return mod


def _build_one(comp: Component, dtype, reduce: bool, extra: dict[str, int], name: str,
               keep: int = KEEP_LAYERS) -> nn.Module:
    missing = 0
    if reduce:
        comp, missing = _reduced(comp, keep)
    mod = cast_(build_module(comp), dtype)
    if missing:
        layers = _layer_list(mod, REPEATED[comp.class_name][1])
        extra[name] = missing * module_bytes([layers[-1]])
    return mod


def _build(comps: dict[str, Component], adapter, dtype, reduce: bool = True, keep: int = KEEP_LAYERS) -> dict[str, Any]:
    mods: dict[str, Any] = {}
    extra: dict[str, int] = {}
    mods["_extra_params"] = extra
    for name in ("text_encoder", "image_encoder", "vae"):
        if name in comps:
            mods[name] = _build_one(comps[name], dtype, reduce, extra, name, keep)
    den_name = adapter.denoiser_attr
    if den_name not in comps:
        raise VidrtError(f"model.path: the pipeline has no {den_name} component")
    if comps[den_name].class_name in REPEATED:
        mods["denoiser"] = _build_one(comps[den_name], dtype, reduce, extra, den_name, keep)
        return mods
    den = build_module(comps[den_name])
    if "motion_adapter" in comps and type(den).__name__ == "UNet2DConditionModel":
        from diffusers import UNetMotionModel

        motion = build_module(comps["motion_adapter"])
        # a stand-in: from_unet2d only reads the adapter's config when it loads no weights (and its `.to`
        # cannot swap fake tensors)
        stand_in = SimpleNamespace(config=dict(motion.config), to=lambda *a, **k: None)
        den = UNetMotionModel.from_unet2d(den, stand_in, load_weights=False)
        del motion
    mods["denoiser"] = cast_(den, dtype)
    return mods


ENCODERS = ("text_encoder", "image_encoder")


def _account(raw: list[dict], params: dict[str, int], group: dict[str, int], s: MemorySettings,
             device: str = "cuda", shard: dict[str, int] | None = None):
    """Place parameters and each stage's tensors on the accelerator or the host, the way the runner does:

    * offload none: every model on the accelerator; the text encoder leaves it after encoding (the runner's
      release_text_encoder; not on a CPU-only run, where there is nowhere to move it);
    * offload model: only the running stage's models are on the accelerator (diffusers model offload);
    * offload group: the denoiser streams block by block and the encoders leaf by leaf (resident: what is
      outside the blocks + two blocks / the two largest leaves); the VAE stays on the accelerator;
    * offload shard (several ranks): like none, with the denoiser's weights sharded over the ranks (`shard`:
      per-rank bytes, 1/N plus the running and the prefetched block);
    * text encoder on the CPU: it never touches the accelerator; its forward runs on the host.
    Host bytes: weights kept in host memory (offloaded or released) plus a CPU text encoder's tensors."""
    stages = []
    peak = 0
    host_peak = 0
    te_host = s.text_encoder == "cpu"
    release_te = device != "cpu"
    den_names = [n for n in params if n not in ENCODERS + ("vae",)]
    for r in raw:
        name = r["name"]
        names = den_names if name == "denoise" else [n for n in STAGE_MODULES.get(name, ()) if n in params]
        on_host = name == "text_encode" and te_host
        on_accel: dict[str, int] = {}
        if s.offload in ("none", "shard"):
            if s.offload == "shard" and not shard:
                raise VidrtError("memory.offload: shard splits the weights over several GPUs; give the number "
                                 "of GPUs (--gpus N) or choose none, model or group")
            for n, b in params.items():
                if n == "text_encoder" and (te_host or (release_te and name != "text_encode")):
                    continue
                on_accel[n] = (shard or {}).get(n, b) if s.offload == "shard" else b
        elif s.offload == "model":
            on_accel = {n: params[n] for n in names if not (n == "text_encoder" and te_host)}
        else:  # group
            on_accel = {n: group.get(n, params[n]) for n in names if not (n == "text_encoder" and te_host)}
            if "vae" in params:
                on_accel["vae"] = params["vae"]
        resident = sum(on_accel.values())
        tensors = r["input_bytes"] + r["activation_bytes"]
        accel = resident + (0 if on_host else tensors)
        if s.offload == "group":  # streamed weights live on the host; the accelerator holds copies
            host = sum(b for n, b in params.items() if n != "vae")
        else:
            host = sum(b for n, b in params.items() if n not in on_accel)
        if device == "cpu":
            host = 0
        if on_host:
            host += tensors
        stages.append({"name": name, "device": "cpu" if on_host else "accelerator",
                       "peak_bytes": int(accel), "param_bytes": int(resident),
                       "stage_param_bytes": int(sum(params[n] for n in names)),
                       "input_bytes": int(r["input_bytes"]), "activation_bytes": int(r["activation_bytes"]),
                       "host_bytes": int(max(0, host)), "seconds": round(r["seconds"], 4),
                       **({"extrapolated": True} if r.get("extrapolated") else {})})
        peak = max(peak, accel)
        host_peak = max(host_peak, host)
    return stages, int(peak), int(max(0, host_peak))


def _leaf_resident(mod: nn.Module) -> int:
    """Resident bytes under leaf-level group offloading: the two largest leaves (one running, one
    prefetched)."""
    leaves = sorted((m for m in mod.modules() if not list(m.children())), key=lambda m: -module_bytes([m]))
    seen: set[int] = set()
    picked: list[int] = []
    for leaf in leaves:  # tied weights (UMT5's shared / embed_tokens) count once
        b = module_bytes([leaf], seen=seen)
        if b:
            picked.append(b)
        if len(picked) == 2:
            break
    return sum(picked)


# ---- per-family stage scripts (mirror what the diffusers pipelines do) ------------------------------------
def _encode_text(tracker, te, p, pad_to: int | None = None):
    ids = torch.zeros(1, p.text_len, dtype=torch.long)
    mask = torch.ones(1, p.text_len, dtype=torch.long)
    outs = []
    with tracker.stage("text_encode", params={"text_encoder": te}):
        for _ in range(2 if p.cfg else 1):
            if "CLIP" in type(te).__name__:
                h = te(ids)[0]
            else:
                h = te(ids, attention_mask=mask).last_hidden_state
            outs.append(h.to(p.dtype))
            del h
    return outs


def _run_wan(tracker, mods, adapter, p):
    den, vae = mods["denoiser"], mods["vae"]
    cfg = vae.config
    embeds = _encode_text(tracker, mods["text_encoder"], p)
    tscale = int(getattr(cfg, "scale_factor_temporal", 4) or 4)
    sf = int(getattr(cfg, "scale_factor_spatial", 8) or 8)
    tf = (p.frames - 1) // tscale + 1
    h, w = p.height // sf, p.width // sf
    image_embeds = None
    condition = None
    if p.with_image and "image_encoder" in mods:
        enc = mods["image_encoder"]
        size = enc.config.image_size
        with tracker.stage("image_encode", params={"image_encoder": enc, "vae": vae}):
            pixels = torch.zeros(1, 3, size, size, dtype=p.dtype)
            image_embeds = enc(pixel_values=pixels, output_hidden_states=True).hidden_states[-2].to(p.dtype)
            del pixels
            image = torch.zeros(1, 3, 1, p.height, p.width, dtype=p.dtype)
            video = torch.cat([image, image.new_zeros(1, 3, p.frames - 1, p.height, p.width)], dim=2)
            del image
            lat = vae.encode(video).latent_dist.mode()
            del video
            mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1).to(torch.float32)
            std = 1.0 / torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1).to(torch.float32)
            lat = (lat.to(torch.float32) - mean) * std
            mask = torch.ones(1, 4, tf, h, w)
            condition = torch.cat([mask, lat], dim=1)
            del lat, mask
    latents = None
    for name, setup in _variants(p.denoise_variants, "denoise"):
        setup()
        latents = None
        with tracker.stage(name, params={adapter.denoiser_attr: den}):
            latents = torch.randn(1, den.config.out_channels, tf, h, w, dtype=torch.float32)
            t = torch.full((1,), 999.0)
            model_in = latents
            if condition is not None:
                model_in = torch.cat([latents, condition], dim=1)
            model_in = model_in.to(p.dtype)
            kw = {"encoder_hidden_states_image": image_embeds} if image_embeds is not None else {}
            if p.cfg and p.fast_cfg:
                # The uncond call runs while the cond prediction is alive and has the same activations:
                # one call with a prediction-sized tensor held gives the same peak at half the cost.
                held = torch.empty(latents.shape, dtype=p.dtype)
            pred = den(hidden_states=model_in, timestep=t, encoder_hidden_states=embeds[0], return_dict=False,
                       **kw)[0]
            if p.cfg and p.fast_cfg:
                pred = held + p.guidance * (pred - held)
                del held
            elif p.cfg:
                uncond = den(hidden_states=model_in, timestep=t, encoder_hidden_states=embeds[1],
                             return_dict=False, **kw)[0]
                pred = uncond + p.guidance * (pred - uncond)
                del uncond
            del model_in
            latents = latents + (-0.01) * pred.to(torch.float32)  # a flow-matching Euler step
            del pred
    del embeds, condition, image_embeds
    latents = latents.to(p.dtype)
    from vidrt.models.wan_vae import decode_host

    for name, setup in _variants(p.decode_variants, "vae_decode"):
        setup()
        with decode_host("meta"):    # the tiled decode's host side is not accelerator memory
            if p.fast_cfg and getattr(vae, "use_tiling", False) and latents.shape[2] > 4:
                _extrapolated_decode(tracker, adapter, vae, latents, name)
                continue
            with tracker.stage(name, params={"vae": vae}):
                video = adapter.decode(SimpleNamespace(vae=vae), latents)
                del video


def _extrapolated_decode(tracker, adapter, vae, latents, name):
    """Wan's tiled decode runs every tile frame by frame (minutes under fake tensors at 480p). Its working
    set per frame is constant after the first latent frame (which decodes to one video frame, the others to
    four) and what could grow is the decoded tile (its frames leave the device as they are decoded:
    vidrt.engine.slicing.vae.tiled_decode_via_host), so decode 2 and 3 latent frames and extrapolate the stage's
    activation peak linearly in latent frames (planner only)."""
    acts = []
    seconds = 0.0
    for n in (2, 3):
        part = latents[:, :, :n].clone()
        with tracker.stage(f"{name}~{n}", params={"vae": vae}):
            video = adapter.decode(SimpleNamespace(vae=vae), part)
            del video
        del part
        st = tracker.stages.pop()
        acts.append(st["activation_bytes"])
        seconds += st["seconds"]
        last = st
    n_full = latents.shape[2]
    act = acts[0] + (acts[1] - acts[0]) * (n_full - 2)
    inputs = last["input_bytes"] - latents[:, :, :3].numel() * latents.element_size() \
        + latents.numel() * latents.element_size()
    tracker.stages.append({"name": name, "seconds": seconds, "peak_bytes": int(last["peak_bytes"]),
                           "param_bytes": last["param_bytes"], "input_bytes": int(max(0, inputs)),
                           "activation_bytes": int(act), "extrapolated": True})


def _run_unet(tracker, mods, adapter, p):
    den, vae = mods["denoiser"], mods["vae"]
    embeds = _encode_text(tracker, mods["text_encoder"], p)
    prompt = torch.cat([embeds[1], embeds[0]]) if p.cfg else embeds[0]
    del embeds
    if adapter.family == "animatediff":  # AnimateDiffPipeline repeats the embeddings per frame
        prompt = prompt.repeat_interleave(repeats=p.frames, dim=0)
    sf = 2 ** (len(vae.config.block_out_channels) - 1)
    h, w = p.height // sf, p.width // sf
    batch = 2 if p.cfg else 1
    extra: dict[str, Any] = {}
    if adapter.family == "i2vgen-xl":
        enc = mods["image_encoder"]
        size = enc.config.image_size
        with tracker.stage("image_encode", params={"image_encoder": enc, "vae": vae}):
            pixels = torch.zeros(1, 3, size, size, dtype=p.dtype)
            emb = enc(pixels).image_embeds.unsqueeze(1)
            del pixels
            if p.cfg:
                emb = torch.cat([torch.zeros_like(emb), emb])
            image = torch.zeros(1, 3, p.height, p.width, dtype=p.dtype)
            lat = vae.encode(image).latent_dist.sample() * vae.config.scaling_factor
            del image
            lat = lat.unsqueeze(2)
            masks = [torch.ones_like(lat[:, :, :1]) * ((i + 1) / max(1, p.frames - 1)) for i in range(p.frames - 1)]
            if masks:
                lat = torch.cat([lat, torch.cat(masks, dim=2)], dim=2)
            del masks
            if p.cfg:
                lat = torch.cat([lat] * 2)
            extra = {"fps": torch.tensor([16] * batch), "image_latents": lat, "image_embeddings": emb}
            del lat, emb
    latents = None
    for name, setup in _variants(p.denoise_variants, "denoise"):
        setup()
        latents = None
        with tracker.stage(name, params={adapter.denoiser_attr: den}):
            latents = torch.randn(1, den.config.in_channels, p.frames, h, w, dtype=p.dtype)
            model_in = torch.cat([latents] * 2) if p.cfg else latents
            t = torch.tensor(999)
            pred = den(model_in, t, encoder_hidden_states=prompt, return_dict=False, **extra)[0]
            del model_in
            if p.cfg:
                uncond, cond = pred.chunk(2)
                pred = uncond + p.guidance * (cond - uncond)
                del uncond, cond
            latents = latents - 0.01 * pred  # a DDIM-like step
            del pred
    del extra, prompt
    for name, setup in _variants(p.decode_variants, "vae_decode"):
        setup()
        with tracker.stage(name, params={"vae": vae}):
            video = adapter.decode(SimpleNamespace(vae=vae), latents)
            del video


def _noop() -> None:
    return None


def _variants(variants, stage: str):
    """Stage names and set-up callables: one plain stage, or `stage#i` per variant (the planner measures
    several slicing / tiling settings in one simulated session)."""
    if not variants:
        return [(stage, _noop)]
    return [(f"{stage}#{i}", fn) for i, fn in enumerate(variants)]


_FAMILY_RUN = {"wan": _run_wan, "animatediff": _run_unet, "i2vgen-xl": _run_unet}
