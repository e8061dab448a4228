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
    # memory engine
    "enable_slicing": "vidrt.engine.slicing",
    "disable_slicing": "vidrt.engine.slicing",
    # profiler / simulator / planner
    "track_memory": "vidrt.memory",
    "simulate": "vidrt.memory",
    "plan": "vidrt.memory",
    # step policies
    "enable_policy": "vidrt.engine.policies",
    "disable_policy": "vidrt.engine.policies",
    "policy_stats": "vidrt.engine.policies",
    "TaylorGate": "vidrt.engine.policies",
    "StepRehash": "vidrt.engine.policies",
    "AdaptiveSkip": "vidrt.engine.policies",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'vidrt' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
