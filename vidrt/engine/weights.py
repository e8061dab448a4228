"""Weight storage: keep the big layers' weights in fp8 and compute in the model's own dtype.

    summary = vidrt.enable_weight_storage(pipe, WeightStorageConfig("fp8"))   # denoiser(s); text encoder opt-in
    vidrt.disable_weight_storage(pipe)        # exact only with keep_originals=True (see below)

The Linear / Conv / Embedding leaves of the denoiser are cast to float8 (one byte per weight instead of two or
four) and carry diffusers' `LayerwiseCastingHook` (`diffusers.hooks.apply_layerwise_casting`): each call
upcasts the layer to the compute dtype (the dtype the model was loaded in: bf16, fp16 or fp32), runs it and
casts it back. Layers whose precision matters more than their bytes stay in the compute dtype: diffusers'
defaults (norms, positional / patch embeddings, the top-level proj_in / proj_out), the model's own
`_skip_layerwise_casting_patterns` and `_keep_in_fp32_modules`, and vidrt's additions (`VIDRT_SKIP`).

Lossy and one-way: float8 keeps 3 (e4m3) or 2 (e5m2) mantissa bits and no per-tensor scale, so the stored
weights are the originals rounded (small weights lose most: e4m3's smallest step is 2**-9). Upcasting back does
not recover them. `disable_weight_storage` restores the originals exactly only when they were kept
(`keep_originals=True`: a host copy of every cast weight, the bytes fp8 saves and more); otherwise it refuses,
or with `lossy=True` leaves the rounded weights in the compute dtype. bench/results/fp8_quality.md measures the
effect on the shipped sample model; docs/WEIGHTS.md says what it means.

Order with weight streaming: cast first, then stream. diffusers' group offloading copies every weight to pinned
host memory when it is applied (on CUDA) and onloads from those copies, so casting after it would stream and
compute with the full-precision copies (no saving, no fp8 effect) while the fp8 tensors are dropped at the
first offload. `enable_weight_storage` therefore refuses a module already under group offloading (and FSDP2
shards), and `disable_weight_storage` refuses one still streamed. Attachment order does not otherwise matter:
the casting hooks sit on leaf layers, where no vidrt feature wraps (vidrt.engine.attach wraps the denoiser and
its blocks, and slicing replaces block computations that call the leaves as modules).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.hooks import apply_layerwise_casting
from diffusers.hooks._common import _GO_LC_SUPPORTED_PYTORCH_LAYERS
from diffusers.hooks.layerwise_casting import _LAYERWISE_CASTING_HOOK, DEFAULT_SKIP_MODULES_PATTERN
from torch import nn

from vidrt.core.errors import VidrtError
from vidrt.engine import attach
from vidrt.engine.attach import STREAMING_HOOKS
from vidrt.models import denoisers_of

__all__ = ["STORAGE_DTYPES", "VIDRT_SKIP", "WeightStorageConfig", "cast_layers", "disable_weight_storage",
           "enable_weight_storage", "skip_patterns", "storage_sizer", "weight_bytes_under_storage",
           "weight_storage_on"]

STORAGE_DTYPES = {"fp8": "float8_e4m3fn", "fp8_e4m3fn": "float8_e4m3fn", "fp8_e5m2": "float8_e5m2"}
COMPUTE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")
# vidrt's additions to diffusers' skip list: the first and last convolutions and every embedding (timestep, fps,
# image, context, token tables: few bytes, and every output pixel depends on them), and fused q/k/v projections
# (vidrt's Wan slicing reads their weight rows directly, outside the layer's call, so the hook never upcasts).
VIDRT_SKIP = (r"^conv_in$", r"^conv_out$", r"embed", r"^shared$", r"to_qkv$", r"to_kv$")
_STATE = "_vidrt_weight_storage"


@dataclass(frozen=True)
class WeightStorageConfig:
    """storage: the dtype weights are kept in between calls: "fp8" (= "fp8_e4m3fn", 3 mantissa bits, range
        +-448: the usual choice for weights) or "fp8_e5m2" (2 mantissa bits, range +-57344);
    text_encoder: also store the text encoder(s) in fp8 (off by default: the encoder runs once per prompt and
        vidrt moves it off the accelerator after encoding, so its bytes rarely set the peak);
    skip: extra regular expressions (re.search on a layer's dotted name within its model) of layers kept in the
        compute dtype, added to the defaults (`skip_patterns`);
    keep_originals: keep a host-memory copy of every cast weight so `disable_weight_storage` restores the model
        exactly (costs host RAM equal to the cast layers' original bytes; off: storage is one-way);
    non_blocking: pass non_blocking to the per-call casts (diffusers' hook), for CUDA."""

    storage: str = "fp8"
    text_encoder: bool = False
    skip: tuple[str, ...] = ()
    keep_originals: bool = False
    non_blocking: bool = False

    def __post_init__(self):
        if self.storage not in STORAGE_DTYPES:
            raise VidrtError(f"WeightStorageConfig.storage: expected one of {', '.join(STORAGE_DTYPES)}, "
                             f"got {self.storage!r}")
        if isinstance(self.skip, str) or not all(isinstance(p, str) for p in self.skip):
            raise VidrtError(f"WeightStorageConfig.skip: expected a tuple of regular expressions, got {self.skip!r}")
        for p in self.skip:
            try:
                re.compile(p)
            except re.error as exc:
                raise VidrtError(f"WeightStorageConfig.skip: {p!r} is not a regular expression ({exc})") from None

    @property
    def dtype(self) -> torch.dtype:
        return getattr(torch, STORAGE_DTYPES[self.storage])


# ------------------------------------------------------------------------------------------- which layers
def skip_patterns(model: nn.Module, config: WeightStorageConfig) -> tuple[str, ...]:
    """The name patterns of `model`'s layers that stay in the compute dtype: diffusers' defaults, the model's own
    declarations (as `ModelMixin.enable_layerwise_casting` reads them), vidrt's additions and the config's."""
    own = tuple(getattr(model, "_skip_layerwise_casting_patterns", None) or ()) + \
        tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    return tuple(dict.fromkeys(DEFAULT_SKIP_MODULES_PATTERN + own + VIDRT_SKIP + tuple(config.skip)))


def _walk(module: nn.Module, patterns: tuple[str, ...], prefix: str = "") -> Iterator[tuple[str, nn.Module, bool]]:
    """(name, leaf, cast) for every layer diffusers' casting would reach, in its traversal order
    (`diffusers.hooks.layerwise_casting._apply_layerwise_casting`): a skipped name prunes its whole subtree."""
    if prefix and any(re.search(p, prefix) for p in patterns):
        if isinstance(module, _GO_LC_SUPPORTED_PYTORCH_LAYERS):
            yield prefix, module, False
        else:
            for name, sub in module.named_modules(prefix=prefix):
                if isinstance(sub, _GO_LC_SUPPORTED_PYTORCH_LAYERS):
                    yield name, sub, False
        return
    if isinstance(module, _GO_LC_SUPPORTED_PYTORCH_LAYERS):
        yield prefix, module, True
        return
    for name, child in module.named_children():
        yield from _walk(child, patterns, f"{prefix}.{name}" if prefix else name)


def _layers(model: nn.Module, config: WeightStorageConfig) -> tuple[list[tuple[str, nn.Module]], int, tuple[str, ...]]:
    """The layers to cast (each module once: a layer shared under two names, like T5's token table, is cast
    under its first name), how many castable layers stay in the compute dtype, and the patterns that make
    diffusers pick exactly those layers."""
    patterns = skip_patterns(model, config)
    cast, kept, seen, extra = [], set(), set(), []
    for name, leaf, is_cast in _walk(model, patterns):
        if not is_cast:
            kept.add(id(leaf))
        elif id(leaf) in seen:
            extra.append(f"^{re.escape(name)}$")
        else:
            seen.add(id(leaf))
            cast.append((name, leaf))
    return cast, len(kept - seen), patterns + tuple(extra)


def cast_layers(model: nn.Module, config: WeightStorageConfig = WeightStorageConfig()) -> list[str]:
    """Dotted names of the layers `enable_weight_storage` stores in `config.storage` (works on meta / fake
    modules: names and classes only)."""
    return [name for name, _ in _layers(model, config)[0]]


def _tensors(module: nn.Module) -> Iterator[torch.Tensor]:
    yield from module.parameters()
    yield from module.buffers()


def storage_sizer(model: nn.Module, config: WeightStorageConfig = WeightStorageConfig()
                  ) -> Callable[..., int]:
    """A byte counter shaped like `vidrt.core.tensors.module_bytes` (`size(modules, seen=None)`) that counts
    `model`'s tensors as weight storage would keep them: the floating tensors of cast layers at the storage
    dtype's size, every other tensor at its own. Reads only shapes and dtypes (meta-device and FakeTensor
    modules work); which layers are cast is decided from the whole model's names."""
    cast = {id(t) for _, leaf in _layers(model, config)[0] for t in _tensors(leaf) if t.is_floating_point()}
    itemsize = torch.finfo(config.dtype).bits // 8

    def size(modules: Iterable[nn.Module], seen: set[int] | None = None) -> int:
        seen = set() if seen is None else seen
        total = 0
        for module in modules:
            for t in _tensors(module):
                if id(t) not in seen:
                    seen.add(id(t))
                    total += t.numel() * (itemsize if id(t) in cast else t.element_size())
        return total

    return size


def weight_bytes_under_storage(model: nn.Module, config: WeightStorageConfig = WeightStorageConfig(), *,
                               under: str = "") -> int:
    """Bytes of `model`'s parameters and buffers with weight storage on (see `storage_sizer`). `under`: count
    only the submodule of that dotted name (a block, for a streaming price)."""
    return storage_sizer(model, config)([model.get_submodule(under) if under else model])


# ------------------------------------------------------------------------------------------- the verbs
def _targets(obj, config: WeightStorageConfig | None) -> list[tuple[str, nn.Module]]:
    """(name, model) of the denoiser(s) and, when asked (or when already stored, for disable), the text
    encoder(s) of a pipeline; a bare denoiser is its own target."""
    if isinstance(obj, nn.Module):
        return [(type(d).__name__, d) for d in denoisers_of(obj)]
    by_id = {id(m): n for n, m in obj.components.items() if isinstance(m, nn.Module)}
    out = [(by_id.get(id(d), type(d).__name__), d) for d in denoisers_of(obj)]
    for name in TEXT_ENCODERS:
        module = getattr(obj, name, None)
        if isinstance(module, nn.Module) and (config.text_encoder if config else weight_storage_on(module)):
            out.append((name, module))
    return out


def weight_storage_on(model: nn.Module) -> bool:
    """Whether `enable_weight_storage` stored this model's layers."""
    return model.__dict__.get(_STATE) is not None


def _compute_dtype(name: str, model: nn.Module) -> torch.dtype:
    dtype = getattr(model, "dtype", None)
    if not isinstance(dtype, torch.dtype):
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    if dtype not in COMPUTE_DTYPES:
        raise VidrtError(f"weight storage: {name} is in {_name(dtype)}; load it in float32, float16 or bfloat16 (the "
                         "dtype its layers compute in) before storing its weights in fp8")
    return dtype


def _refuse_wrong_order(name: str, model: nn.Module, action: str) -> None:
    for sub in model.modules():
        if type(sub).__name__.startswith("FSDP"):
            raise VidrtError(f"weight storage: {name} is sharded by FSDP2; fp8 storage is not combined with "
                             "offload 'shard'")
        registry = getattr(sub, "_diffusers_hook", None)
        if registry is not None and any(h in registry.hooks for h in STREAMING_HOOKS):
            raise VidrtError(f"weight storage: {name} streams its weights (group offloading); {action}")
    if attach.module_hook(model, "distributed", "sequence") is not None:
        raise VidrtError(f"weight storage: {name} runs sequence-parallel, which reads q/k/v weights directly; "
                         "fp8 storage is not combined with it")


def enable_weight_storage(obj, config: WeightStorageConfig = WeightStorageConfig()) -> dict[str, Any]:
    """Store the denoiser(s) (and with `config.text_encoder` the text encoder(s)) of a pipeline or bare denoiser
    in `config.storage`, computing in each model's current dtype. Call it before enable_offload. Returns a
    JSON-able summary: per model the layers cast and kept, the compute dtype, the bytes of its parameters
    and buffers before and after; their totals."""
    targets = _targets(obj, config)
    plans = []
    for name, model in targets:                 # check everything before changing anything
        if weight_storage_on(model):
            raise VidrtError(f"weight storage: already on for {name}; disable_weight_storage first")
        if any(type(p).__name__ == "GGUFParameter" for p in model.parameters()):
            raise VidrtError(f"weight storage: {name} holds GGUF-quantized weights already; fp8 storage applies to "
                             "native weights")
        _refuse_wrong_order(name, model, "call enable_weight_storage before enable_offload "
                                         "(disable_offload, enable_weight_storage, enable_offload)")
        plans.append((name, model, _compute_dtype(name, model)))
    summary: dict[str, Any] = {"storage": _name(config.dtype), "lossy": True,
                               "originals_kept": config.keep_originals, "models": {}}
    for name, model, compute in plans:
        summary["models"][name] = _store(model, config, compute)
    summary["bytes_before"] = sum(m["bytes_before"] for m in summary["models"].values())
    summary["bytes_after"] = sum(m["bytes_after"] for m in summary["models"].values())
    return summary


def _store(model: nn.Module, config: WeightStorageConfig, compute: torch.dtype) -> dict[str, Any]:
    cast, kept, patterns = _layers(model, config)
    before = _nbytes(model)
    layers = []
    for _, leaf in cast:
        layers.append({"module": leaf, "had_registry": hasattr(leaf, "_diffusers_hook"),
                       "had_forward": "forward" in leaf.__dict__,
                       "originals": {id(t): t.detach().to("cpu", copy=True) for t in _tensors(leaf)
                                     if t.is_floating_point()} if config.keep_originals else None})
    apply_layerwise_casting(model, config.dtype, compute, skip_modules_pattern=patterns,
                            non_blocking=config.non_blocking)
    hooked = [m for m in model.modules() if _hook_of(m) is not None]
    if {id(m) for m in hooked} != {id(leaf) for _, leaf in cast}:   # diffusers' traversal changed under us
        raise RuntimeError(f"vidrt weight storage: diffusers cast {len(hooked)} layers, vidrt counted {len(cast)}")
    model.__dict__[_STATE] = {"compute": compute, "storage": config.dtype, "layers": layers}
    return {"compute": _name(compute), "layers_cast": len(cast), "layers_kept": kept,
            "bytes_before": before, "bytes_after": _nbytes(model)}


def _name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def _nbytes(model: nn.Module) -> int:
    seen, total = set(), 0
    for t in _tensors(model):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def _hook_of(module: nn.Module):
    registry = getattr(module, "_diffusers_hook", None)
    return registry.get_hook(_LAYERWISE_CASTING_HOOK) if registry is not None else None


def disable_weight_storage(obj, *, lossy: bool = False) -> dict[str, Any]:
    """Remove the casting hooks and put full-precision weights back: the kept originals (exact), or with
    `lossy=True` the fp8 values upcast to the compute dtype (the rounding stays). Without kept originals and
    without `lossy`, refuses and changes nothing. Returns {model name: "restored" | "upcast (lossy)"}."""
    targets = [(n, m) for n, m in _targets(obj, None) if weight_storage_on(m)]
    for name, model in targets:
        _refuse_wrong_order(name, model, "call disable_offload before disable_weight_storage")
        state = model.__dict__[_STATE]
        if not lossy and any(layer["originals"] is None for layer in state["layers"]):
            raise VidrtError(f"weight storage: {name}'s weights were stored in {_name(state['storage'])} "
                             "without keeping the originals, so they cannot be restored (fp8 rounding is lossy); "
                             "reload the model, or pass lossy=True to keep the rounded weights in "
                             f"{_name(state['compute'])}, or enable with WeightStorageConfig(keep_originals=True)")
    done = {}
    for name, model in targets:
        state = model.__dict__.pop(_STATE)
        exact = not lossy or all(layer["originals"] is not None for layer in state["layers"])
        for layer in state["layers"]:
            attach.remove_diffusers_hook(layer["module"], _LAYERWISE_CASTING_HOOK,
                                         made_registry=not layer["had_registry"], had_forward=layer["had_forward"])
            _put_back(layer["module"], layer["originals"], state["compute"])
        done[name] = "restored" if exact else "upcast (lossy)"
    return done


def _put_back(leaf: nn.Module, originals: dict[int, torch.Tensor] | None, compute: torch.dtype) -> None:
    with torch.no_grad():
        for t in _tensors(leaf):
            if not t.is_floating_point():
                continue
            t.data = originals[id(t)].to(t.device) if originals is not None else t.data.to(compute)
