"""Step policies: decide whether a denoiser step, or its deep blocks, run. See docs/POLICIES.md.

    vidrt.enable_policy(pipe, vidrt.TaylorGate())      # a policy, or a list to compose
    vidrt.policy_stats(pipe)                           # the last generation's counts
    vidrt.disable_policy(pipe)
"""
from __future__ import annotations

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
from vidrt.models import adapter_for

__all__ = ["AdaptiveSkip", "CallInfo", "Layout", "POLICIES", "Policy", "StepRehash", "TaylorGate",
           "attached_policies", "disable_policy", "enable_policy", "policy_from_config", "policy_stats"]


def _resolve(target):
    """(denoiser, scheduler) of a pipeline of any supported family, or of a bare denoiser."""
    if isinstance(target, nn.Module):
        return target, None
    try:
        den = adapter_for(target).denoiser(target)
    except VidrtError:
        den = None
        for attr in ("transformer", "unet"):
            if isinstance(getattr(target, attr, None), nn.Module):
                den = getattr(target, attr)
                break
        if den is None:
            raise
    return den, getattr(target, "scheduler", None)


def _controller(target) -> Controller | None:
    try:
        den, _ = _resolve(target)
    except VidrtError:
        return None
    return attach.get_state(den, FEATURE)


def enable_policy(pipe, policy, *, num_steps: int | None = None):
    """Attach `policy` (a Policy, a list of them, or None) to `pipe`'s denoiser (or to a bare denoiser).

    Replaces any policy attached before. `num_steps` only matters for a bare denoiser called by hand (the
    last step is then known; pipelines report it themselves). Returns `pipe`.
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
    den, sched = _resolve(pipe)
    ctl = Controller(den, policies, scheduler=sched, num_steps=num_steps)
    ctl.install()
    return pipe


_LAST_STATS: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def disable_policy(pipe) -> None:
    """Detach the policy; the denoiser, its blocks and the scheduler are exactly as before.

    The stats of the last generation stay readable through `policy_stats` (kept outside the module)."""
    ctl = _controller(pipe)
    if ctl is not None:
        if ctl.gen.steps:
            _LAST_STATS[ctl.den] = ctl.stats()
        ctl.uninstall()
        for p in ctl.policies:
            p.release()


def policy_stats(pipe) -> dict[str, Any]:
    """Flat stats of the last generation: name, steps_total/full/skipped, blocks_total/evaluated (+ extras).

    With a policy attached: its current/last generation. After `disable_policy`: the last generation run
    under the policy that was attached. Never had a policy: name "none" and zeros. JSON-safe values."""
    ctl = _controller(pipe)
    if ctl is not None:
        return ctl.stats()
    try:
        den, _ = _resolve(pipe)
    except VidrtError:
        den = None
    if den is not None and den in _LAST_STATS:
        return dict(_LAST_STATS[den])
    return {"name": "none", "steps_total": 0, "steps_full": 0, "steps_skipped": 0, "blocks_total": 0,
            "blocks_evaluated": 0}


def attached_policies(pipe) -> list[Policy]:
    ctl = _controller(pipe)
    return list(ctl.policies) if ctl else []
