"""`apply_memory_config(pipe, memory, device)`: the runner's single entry to the memory engine.

memory = {"slicing": "auto" | "off" | {"frames": int|None, "tokens": int|None, "positions": int|None},
          "offload": "none" | "model" | "group",
          "vae_tiling": "auto" | "on" | "off",
          (optional) "height": int, "width": int  -- the render size, for vae_tiling "auto"}
Order: slicing, then VAE settings, then offload. Returns a JSON-able dict of what was applied.
"""
from __future__ import annotations

from typing import Any

from vidrt.core.errors import VidrtError


def _slicing_args(value) -> dict | None:
    if value in (None, "off", False):
        return None
    if value in ("auto", "on", True):
        return {"chunk_frames": None, "chunk_tokens": None, "chunk_positions": None}
    if isinstance(value, dict):
        unknown = set(value) - {"frames", "tokens", "positions"}
        if unknown:
            raise VidrtError(f"memory.slicing: unknown key(s) {', '.join(sorted(unknown))}; "
                             "expected frames, tokens, positions")
        out = {}
        for key in ("frames", "tokens", "positions"):
            v = value.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise VidrtError(f"memory.slicing.{key}: expected a positive integer or null, got {v!r}")
            out[f"chunk_{key}"] = v
        return out
    raise VidrtError(f"memory.slicing: expected auto, off or a mapping of frames/tokens/positions, got {value!r}")


def apply_memory_config(pipe, memory: dict | None, device) -> dict[str, Any]:
    from vidrt.engine.offload import enable_offload
    from vidrt.engine.slicing import disable_slicing, enable_slicing
    from vidrt.engine.slicing.vae import apply_vae_settings

    memory = dict(memory or {})
    applied: dict[str, Any] = {}

    args = _slicing_args(memory.get("slicing", "auto"))
    if args is None:
        disable_slicing(pipe)
        applied["slicing"] = "off"
    else:
        summary = enable_slicing(pipe, **args)
        applied["slicing"] = {
            "frames": summary["chunk_frames"] if summary["chunk_frames"] is not None else "auto",
            "tokens": summary["chunk_tokens"] if summary["chunk_tokens"] is not None else "auto",
            "positions": summary["chunk_positions"] if summary["chunk_positions"] is not None else "auto",
            "patched_modules": summary["patched"],
        }

    vae_mode = memory.get("vae_tiling", "auto")
    if vae_mode not in ("auto", "on", "off"):
        raise VidrtError(f"memory.vae_tiling: expected auto, on or off, got {vae_mode!r}")
    applied["vae"] = apply_vae_settings(getattr(pipe, "vae", None), vae_mode, memory.get("height"),
                                        memory.get("width"))

    mode = memory.get("offload", "none") or "none"
    try:
        applied["offload"] = enable_offload(pipe, mode, device)
    except ValueError as exc:
        raise VidrtError(str(exc)) from None
    return applied
