"""Where a simulated run's parameters live, stage by stage: on the accelerator or on the host.

The session measures each stage's tensors once; placing the weights is arithmetic on top, so the planner can
weigh every offload and text-encoder setting against one session.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from vidrt.core.errors import VidrtError
from vidrt.core.tensors import module_bytes
from vidrt.engine.offload import offload_granularity
from vidrt.engine.weights import WeightStorageConfig, cast_layers, storage_sizer
from vidrt.memory.settings import MemorySettings
from vidrt.models.layout import stream_units
from vidrt.models.single_file import SingleFile, diffusers_names

ENCODERS = ("text_encoder", "image_encoder")


@dataclass(frozen=True)
class StoredWeights:
    """A denoiser's weights under fp8 storage (vidrt.engine.weights), measured on the simulated model: its bytes,
    its resident bytes under group offloading, the transient of one upcast layer and the per-call casting work;
    the layers a reduced model left out count as copies of its built repeated layers."""

    model: str                   # the denoiser's params key
    total_bytes: int             # every weight, fp8 where cast
    resident: dict[str, int]     # under group offloading, per granularity (GRANULARITIES)
    upcast_bytes: int            # the largest cast layer in the compute dtype: held while it runs
    cast_bytes: int              # native bytes of every cast layer: each call upcasts and recasts them
    cast_layers: int
    itemsize: int                # bytes per weight in the compute dtype


def stored_weights(name: str, den: nn.Module, total_bytes: int, repeated: list[nn.Module]) -> StoredWeights:
    """fp8 storage of the simulated denoiser `den` (meta or fake tensors) whose full model has `total_bytes`
    natively; `repeated`: its built repeated layers, which stand for the ones a reduced model left out."""
    config = WeightStorageConfig("fp8")
    size = storage_sizer(den, config)
    built = module_bytes([den])
    missing = max(0, total_bytes - built)            # the layers left out, natively
    rep = module_bytes(repeated)
    ratio = size(repeated) / rep if rep else 1.0
    layers = [den.get_submodule(n) for n in cast_layers(den, config)]
    in_rep = {id(m) for layer in repeated for m in layer.modules()}
    rep_cast = [m for m in layers if id(m) in in_rep]
    per_rep_layer = missing / rep if rep else 0.0    # how many built repeated layers' worth were left out
    stored_total = int(size([den]) + missing * ratio)
    itemsize = next((p.element_size() for p in den.parameters() if p.is_floating_point()), 4)
    return StoredWeights(
        name, stored_total,
        {g: group_resident(den, stored_total, g, size) for g in GRANULARITIES},
        max((module_bytes([m]) for m in layers), default=0),
        int(module_bytes(layers) + module_bytes(rep_cast) * per_rep_layer),
        int(round(len(layers) + len(rep_cast) * per_rep_layer)), itemsize)


def file_stored_weights(name: str, den: nn.Module, total_bytes: int, file: SingleFile) -> StoredWeights:
    """The denoiser as a GGUF file stores it (`model.weights`; vidrt.models.single_file), from the file's header
    and the simulated model `den` (meta or fake tensors) whose full model has `total_bytes` natively. diffusers'
    GGUF quantizer keeps a block-quantized tensor quantized where it is the weight of a Linear layer outside the
    class's `_keep_in_fp32_modules` (a GGUFLinear, which dequantizes it on every call); everything else loads in
    the model's dtype. So the stored bytes are the native ones with each kept tensor's native bytes replaced by
    its bytes in the file, exactly, including the layers a reduced model left out (the file has them all)."""
    import re

    tensors = diffusers_names(file, type(den), {n for n, _ in den.named_parameters()})
    not_convert = [m for m in (getattr(den, "_keep_in_fp32_modules", None) or []) if m]
    itemsize = next((p.element_size() for p in den.parameters() if p.is_floating_point()), 4)

    def layer(path: str) -> nn.Module | None:
        for candidate in (path, re.sub(r"^(\w+)\.\d+\.", r"\g<1>.0.", path)):   # a block left out: block 0's
            try:
                return den.get_submodule(candidate)
            except AttributeError:
                continue
        return None

    kept = {}
    for tname, info in tensors.items():
        path, _, leaf = tname.rpartition(".")
        if info.quantized and leaf == "weight" and isinstance(layer(path), nn.Linear) \
                and not any(m in tname.split(".") for m in not_convert):
            kept[tname] = info
    numel = {n: math.prod(t.shape) for n, t in kept.items()}
    stored_total = int(total_bytes - sum(numel[n] * itemsize - t.nbytes for n, t in kept.items()))
    ids = {id(p): kept[n].nbytes for n, p in den.named_parameters() if n in kept}

    def size(modules, seen: set[int] | None = None) -> int:
        seen = set() if seen is None else seen
        total = 0
        for module in modules:
            for t in [*module.parameters(), *module.buffers()]:
                if id(t) not in seen:
                    seen.add(id(t))
                    total += ids.get(id(t), t.numel() * t.element_size())
        return total

    return StoredWeights(
        name, stored_total, {g: group_resident(den, stored_total, g, size) for g in GRANULARITIES},
        max((numel[n] * itemsize for n in kept), default=0), sum(numel[n] * itemsize for n in kept), len(kept),
        itemsize)


def account(raw: list[dict], params: dict[str, int], group: dict[str, int], s: MemorySettings,
            device: str = "cuda", shard: dict[str, int] | None = None, upcast: dict[str, int] | None = None):
    """Place parameters and each stage's tensors on the accelerator or the host, the way the runner does:

    * offload none: every model on the accelerator; the text encoder leaves it after encoding (the runner's
      release_text_encoder; not on a CPU-only run, where there is nowhere to move it);
    * offload model: only the running stage's models are on the accelerator (diffusers model offload); of models
      that take turns in a stage (`alternate`: Wan 2.2 A14B's experts) only the largest counts;
    * offload group: the denoiser streams block by block and the encoders leaf by leaf (resident: what is
      outside the blocks + two blocks / the two largest leaves); the VAE stays on the accelerator;
    * offload shard (several ranks): like none, with the denoiser's weights sharded over the ranks (`shard`:
      per-rank bytes, 1/N plus the running and the prefetched block);
    * offload group from disk (`s.disk`): the denoiser's weights live in files; the host holds only the copies
      in flight (as many bytes as the accelerator's resident share); the encoders stream from host memory
      (vidrt.engine.offload: tied weights break diffusers' disk path);
    * text encoder on the CPU: it never touches the accelerator; its forward runs on the host;
    * weights fp8: `params` and `group` count the denoiser's stored bytes (Session.params_for / resident), and
      the stages it runs in hold one layer upcast to the compute dtype on top (`upcast`, per model).
    `raw`: the session's stages, each with the `models` that run in it. Host bytes: weights kept in host
    memory (offloaded or released) plus a CPU text encoder's tensors. (What loading the pipeline takes before
    the plan applies is not counted: diffusers' from_pretrained holds each model in host memory once.)"""
    stages = []
    peak = 0
    host_peak = 0
    te_host = s.text_encoder == "cpu"
    release_te = device != "cpu"
    for r in raw:
        name = r["name"]
        names = list(r.get("models", ()))
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
            taking_turns = [n for n in r.get("alternate", ()) if n in on_accel]
            for n in sorted(taking_turns, key=lambda n: on_accel[n])[:-1]:   # only the running one is moved in
                del on_accel[n]
        else:  # group
            on_accel = {n: group.get(n, params[n]) for n in names if not (n == "text_encoder" and te_host)}
            if "vae" in params:
                on_accel["vae"] = params["vae"]
        resident = sum(on_accel.values())
        tensors = r["input_bytes"] + r["activation_bytes"]
        resident += sum(b for n, b in (upcast or {}).items() if n in names)
        accel = resident + (0 if on_host else tensors)
        if s.offload == "group" and s.disk:   # the denoiser from files: only its copies in flight pass the host
            host = sum(b for n, b in params.items() if n in ENCODERS) + \
                sum(group.get(n, params[n]) for n in names if n not in ENCODERS and n != "vae")
        elif s.offload == "group":  # streamed weights live on the host; the accelerator holds copies
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


GRANULARITIES = ("auto", "block", "leaf")


def _level(mod: nn.Module, total_bytes: int, granularity: str) -> str:
    return offload_granularity(mod, total_bytes) if granularity == "auto" else f"{granularity}_level"


def resident_under_group_offload(named: dict[str, nn.Module], params: dict[str, int],
                                 granularity: str = "auto") -> dict[str, int]:
    """Accelerator bytes of each model under group offloading: the encoders leaf by leaf, the VAE whole,
    the denoiser block by block or leaf by leaf (`granularity`)."""
    return {k: (leaf_resident(v) if k in ENCODERS else params[k] if k == "vae" else
                group_resident(v, params[k], granularity))
            for k, v in named.items()}


def group_resident(mod: nn.Module, total_bytes: int, granularity: str = "auto", size=module_bytes) -> int:
    """Resident bytes of a denoiser under vidrt's group offloading (vidrt.engine.offload): block level keeps what
    is outside the outermost blocks plus two blocks (the one running and the one being prefetched); leaf
    level keeps two leaves. `total_bytes` counts the layers a reduced simulation model dropped; `size`
    counts a list of modules' bytes (`module_bytes`, or weight storage's `storage_sizer`)."""
    if _level(mod, total_bytes, granularity) == "leaf_level" or not stream_units(mod):
        return leaf_resident(mod, size)
    units = sorted((size([b]) for b in stream_units(mod)), reverse=True)
    built = size([mod])
    running = units[:2]
    if len(running) == 1 and total_bytes > built:   # a reduced model built one of several blocks
        running = running * 2
    return built - sum(units) + sum(running)


def leaf_resident(mod: nn.Module, size=module_bytes) -> int:
    """Resident bytes under leaf-level group offloading: the two largest leaves (one running, one
    prefetched)."""
    leaves = sorted((m for m in mod.modules() if not list(m.children())), key=lambda m: -size([m]))
    seen: set[int] = set()
    picked: list[int] = []
    for leaf in leaves:  # tied weights (UMT5's shared / embed_tokens) count once
        b = size([leaf], seen=seen)
        if b:
            picked.append(b)
        if len(picked) == 2:
            break
    return sum(picked)


def stream_groups_under_group_offload(named: dict[str, nn.Module], params: dict[str, int],
                                      repeated: dict[str, tuple[list, int]], granularity: str = "auto"
                                      ) -> dict[str, int]:
    """How many separate copies stream one call's weights under group offloading, per model (the VAE stays):
    one per block at block level, one per weighted leaf at leaf level; layers a reduced model left out count."""
    out = {}
    for k, mod in named.items():
        if k == "vae":
            continue
        layers, full = repeated.get(k, ((), 0))
        scale = full / len(layers) if layers else 1.0
        if k not in ENCODERS and stream_units(mod) and _level(mod, params[k], granularity) == "block_level":
            units = stream_units(mod)
            out[k] = int(round(len(units) * scale)) + 1       # + the module's own weights outside the blocks
        else:
            leaves = [m for m in mod.modules() if not list(m.children()) and next(m.parameters(), None) is not None]
            in_layers = sum(1 for layer in layers for m in layer.modules()
                            if not list(m.children()) and next(m.parameters(), None) is not None)
            out[k] = int(round(len(leaves) - in_layers + in_layers * scale))
    return out
