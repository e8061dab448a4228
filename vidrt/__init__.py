"""vidrt: a memory-optimized video diffusion runtime.

The public verbs live here; heavy modules are imported on first use so `import vidrt` stays cheap.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "load": "vidrt.models",
    "VidrtError": "vidrt.core.errors",
    "RenderConfig": "vidrt.config",
    "load_config": "vidrt.config",
    "render": "vidrt.run.render",
    # features attached to a pipeline: a frozen config each, and a pair of verbs
    "SlicingConfig": "vidrt.engine.slicing",
    "enable_slicing": "vidrt.engine.slicing",
    "disable_slicing": "vidrt.engine.slicing",
    "enable_policy": "vidrt.engine.policies",
    "disable_policy": "vidrt.engine.policies",
    "policy_stats": "vidrt.engine.policies",
    "TaylorGate": "vidrt.engine.policies",
    "StepRehash": "vidrt.engine.policies",
    "AdaptiveSkip": "vidrt.engine.policies",
    "OffloadConfig": "vidrt.engine.offload",
    "enable_offload": "vidrt.engine.offload",
    "disable_offload": "vidrt.engine.offload",
    "LongVideoConfig": "vidrt.engine.long",
    "enable_long_video": "vidrt.engine.long",
    "disable_long_video": "vidrt.engine.long",
    "OomFallbackConfig": "vidrt.engine.oom",
    "enable_oom_fallback": "vidrt.engine.oom",
    "disable_oom_fallback": "vidrt.engine.oom",
    "VaeConfig": "vidrt.engine.vae",
    "enable_vae_settings": "vidrt.engine.vae",
    "disable_vae_settings": "vidrt.engine.vae",
    "DistributedConfig": "vidrt.engine.distributed",
    "enable_distributed": "vidrt.engine.distributed",
    "disable_distributed": "vidrt.engine.distributed",
    "WeightStorageConfig": "vidrt.engine.weights",
    "enable_weight_storage": "vidrt.engine.weights",
    "disable_weight_storage": "vidrt.engine.weights",
    # profiler / simulator / planner
    "track_memory": "vidrt.memory.tracker",
    "simulate": "vidrt.memory.simulate",
    "plan": "vidrt.memory.planner",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'vidrt' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
