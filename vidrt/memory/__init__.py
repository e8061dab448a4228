"""Memory: real peaks (tracker), full-size simulation without allocation, and the budget planner."""
from __future__ import annotations

import importlib

from vidrt.memory.tracker import MemoryTracker, format_bytes, track_memory

# Imported eagerly: the submodule vidrt.memory.simulate would otherwise shadow the function of that name
# as soon as anything imports the submodule.
from vidrt.memory.simulate import MemorySettings, SimReport, simulate  # noqa: E402

_LAZY = {
    "plan": "vidrt.memory.planner",
    "Plan": "vidrt.memory.planner",
    "parse_bytes": "vidrt.memory.planner",
    "profile_command": "vidrt.run.commands",
    "plan_command": "vidrt.run.commands",
}

__all__ = ["MemorySettings", "MemoryTracker", "SimReport", "format_bytes", "simulate", "track_memory", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vidrt.memory' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
