"""The models a dry run can build without weights, as component configs.

A dry run (vidrt.memory.simulate) needs each component's class and config, not its weights: they come from
a shipped hub config (known_configs/, for the ids below), a local pipeline folder or an existing pipeline.
`build_module` turns one into the real diffusers / transformers class (under FakeTensorMode nothing is
allocated). The family's own additions (AnimateDiff's motion adapter) come from its adapter.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from vidrt.core.errors import VidrtError
from vidrt.models import get_adapter
from vidrt.models.loading import read_index
from vidrt.models.known_ids import KNOWN_MODELS, KNOWN_MOTION_ADAPTERS, KNOWN_PIPELINES, known_dir  # noqa: F401 (re-exported)

# Repeated identical layers, by class: (config key of their number, attribute path of the layer list). A
# forward's activation peak is reached inside one layer with the same tensors carried between layers, so a
# model built with two of them has the same peak as one with forty; the simulator builds the shorter one and
# adds the missing layers' parameters from one layer's size (much faster).
REPEATED_LAYERS = {
    "WanTransformer3DModel": ("num_layers", "blocks"),
    "UMT5EncoderModel": ("num_layers", "encoder.block"),
    "T5EncoderModel": ("num_layers", "encoder.block"),
}


@dataclass
class Component:
    library: str       # diffusers | transformers
    class_name: str
    config: Any        # dict (from json) or a transformers config object


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise VidrtError(f"model.path: cannot read {path}: {exc}") from None


def components_from_folder(folder: Path) -> dict[str, Component]:
    """Components of a pipeline folder (model_index.json and each component's config.json); `_pipeline`
    names the pipeline class, `_tokenizer` carries the tokenizer's length where the folder has one."""
    index = read_index(folder)     # (parsed once per render with the checks' reads of it)
    out = {}
    for name, value in index.items():
        if name.startswith("_") or not isinstance(value, list) or len(value) != 2 or value[0] is None:
            continue
        cfg_path = folder / name / "config.json"
        if not cfg_path.is_file():
            continue
        lib, cls = value
        cfg = read_json(cfg_path)
        out[name] = Component("diffusers" if lib == "diffusers" else "transformers", cfg.get("_class_name", cls)
                              if lib == "diffusers" else cls, cfg)
    # the pipeline's own settings (Wan 2.2: boundary_ratio, expand_timesteps)
    settings = {k: v for k, v in index.items() if not k.startswith("_") and not isinstance(v, list)}
    out["_pipeline"] = Component("diffusers", index.get("_class_name", ""), settings)
    tok = folder / "tokenizer" / "tokenizer_config.json"
    if tok.is_file():
        max_len = read_json(tok).get("model_max_length")
        if isinstance(max_len, int) and 0 < max_len < 10**6:
            out["_tokenizer"] = Component("transformers", "tokenizer", {"model_max_length": max_len})
    return out


def components_from_pipe(pipe) -> dict[str, Component]:
    """Components of an existing pipeline (their classes and configs; the weights are not used)."""
    out = {}
    for name, mod in pipe.components.items():
        if not isinstance(mod, nn.Module):
            continue
        lib = "transformers" if type(mod).__module__.startswith("transformers") else "diffusers"
        cfg = mod.config if lib == "transformers" else dict(mod.config)
        out[name] = Component(lib, type(mod).__name__, cfg)
    settings = {k: v for k, v in dict(pipe.config).items() if not k.startswith("_") and not isinstance(v, (list, tuple))}
    out["_pipeline"] = Component("diffusers", type(pipe).__name__, settings)
    return out


def resolve_components(config) -> dict[str, Component]:
    """Components of `config.model.path` (a known id or a local pipeline folder) plus what its family adds."""
    model = config.model
    path = str(model.path)
    kd = known_dir(path)
    if kd is not None:
        comps = components_from_folder(kd)
    elif (Path(path) / "model_index.json").is_file():
        comps = components_from_folder(Path(path))
    else:
        raise VidrtError(f"model.path: {path!r} is not a known model id or a local pipeline folder; "
                         f"known ids for dry runs: {', '.join(KNOWN_PIPELINES)}")
    return get_adapter(model.family).simulation_components(model, comps)


def _clean(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if not k.startswith("_") and k not in ("architectures",)}


def build_module(comp: Component) -> nn.Module:
    """The component's real class built from its config (random init; under FakeTensorMode, nothing real)."""
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
