"""Step policies: decide whether a denoiser step, or its deep blocks, run. See docs/POLICIES.md.

    vidrt.enable_policy(pipe, vidrt.TaylorGate())      # a policy, or a list to compose
    vidrt.policy_stats(pipe)                           # the last generation's counts
    vidrt.disable_policy(pipe)
"""
from __future__ import annotations

import copy
import weakref
from typing import Any

from torch import nn

from vidrt.core.errors import VidrtError
from vidrt.engine import attach
from vidrt.engine.policies.adaptive import AdaptiveSkip
from vidrt.engine.policies.contract import CallInfo, Layout, Policy
from vidrt.engine.policies.controller import FEATURE, Controller
from vidrt.engine.policies.from_config import POLICIES, policy_from_config
from vidrt.engine.policies.rehash import StepRehash
from vidrt.engine.policies.taylor_gate import TaylorGate
from vidrt.models import denoisers_of

__all__ = ["AdaptiveSkip", "CallInfo", "Layout", "POLICIES", "Policy", "StepRehash", "TaylorGate",
           "attached_policies", "disable_policy", "enable_policy", "policy_from_config", "policy_stats"]


def _resolve(target) -> tuple[list[nn.Module], Any]:
    """(denoisers, scheduler) of a pipeline of any supported family (Wan 2.2 A14B: both experts), or of a bare
    denoiser."""
    if isinstance(target, nn.Module):
        return [target], None
    try:
        dens = denoisers_of(target)
    except (VidrtError, TypeError):
        dens = [getattr(target, a) for a in ("transformer", "unet") if isinstance(getattr(target, a, None), nn.Module)]
        if not dens:
            raise
    return dens, getattr(target, "scheduler", None)


def _controllers(target) -> list[Controller]:
    try:
        dens, _ = _resolve(target)
    except (VidrtError, TypeError):
        return []
    return [c for c in (attach.get_state(d, FEATURE) for d in dens) if c is not None]


def enable_policy(pipe, policy, *, num_steps: int | None = None):
    """Attach `policy` (a Policy, a list of them, or None) to `pipe`'s denoiser (or to a bare denoiser).
    Replaces any policy attached before. A pipeline with several denoisers (Wan 2.2 A14B's two experts) gets a
    controller per denoiser, the first with `policy` itself and each other one with a fresh copy, so every
    expert keeps its own histories (per CFG stream and window within it). `num_steps` only matters for a bare
    denoiser called by hand (the last step is then known; pipelines report it themselves). Returns `pipe`.
    """
    disable_policy(pipe)
    if policy is None:
        return pipe
    policies = list(policy) if isinstance(policy, (list, tuple)) else [policy]
    for p in policies:
        if not isinstance(p, Policy):
            raise VidrtError(f"acceleration.policy: {p!r} is not a vidrt policy")
    if not policies:
        return pipe
    dens, sched = _resolve(pipe)
    controllers = [Controller(den, policies if i == 0 else [copy.deepcopy(p) for p in policies], scheduler=sched,
                              num_steps=num_steps) for i, den in enumerate(dens)]
    controllers[0].install(siblings=controllers[1:])
    for ctl in controllers[1:]:          # the first controller's wrapper tells them of a new generation
        ctl.install(watch_scheduler=False)
    return pipe


_LAST_STATS: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def disable_policy(pipe) -> None:
    """Detach the policy; the denoiser, its blocks and the scheduler are exactly as before.
    The stats of the last generation stay readable through `policy_stats` (kept outside the module)."""
    for ctl in _controllers(pipe):
        if ctl.gen.steps:
            _LAST_STATS[ctl.den] = ctl.stats()
        ctl.uninstall()
        for p in ctl.policies:
            p.release()


def policy_stats(pipe) -> dict[str, Any]:
    """Flat stats of the last generation: name, steps_total/full/skipped, blocks_total/evaluated (+ extras).
    With a policy attached: its current/last generation. After `disable_policy`: the last generation run
    under the policy that was attached. Never had a policy: name "none" and zeros. JSON-safe values. Several
    denoisers (Wan 2.2 A14B): each step is counted by the expert that ran it, the counts added up."""
    stats = [c.stats() for c in _controllers(pipe)]
    if not stats:
        try:
            dens, _ = _resolve(pipe)
        except (VidrtError, TypeError):
            dens = []
        stats = [dict(_LAST_STATS[d]) for d in dens if d in _LAST_STATS]
    if not stats:
        return {"name": "none", "steps_total": 0, "steps_full": 0, "steps_skipped": 0, "blocks_total": 0,
                "blocks_evaluated": 0}
    return stats[0] if len(stats) == 1 else _combined(stats)


def _combined(stats: list[dict[str, Any]]) -> dict[str, Any]:
    out = dict(stats[0])
    for key in ("steps_total", "steps_full", "steps_skipped", "blocks_total", "blocks_evaluated", "state_bytes"):
        out[key] = sum(s.get(key, 0) for s in stats)
    out["skipped_steps"] = sorted(x for s in stats for x in s.get("skipped_steps", []))
    out["per_denoiser"] = [{k: s[k] for k in ("steps_total", "steps_skipped", "blocks_total", "blocks_evaluated")}
                           for s in stats]
    return out


def attached_policies(pipe) -> list[Policy]:
    """The policies attached to the (first) denoiser: the ones given to enable_policy."""
    ctls = _controllers(pipe)
    return list(ctls[0].policies) if ctls else []
