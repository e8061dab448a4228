"""The controller of the policies attached to one denoiser: step / stream bookkeeping, the block skipping a
block policy asks for, and the statistics of a generation. It sees each call through two diffusers hooks
(vidrt.engine.attach, feature "policy"): one on the denoiser, one on each top-level block."""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.hooks import ModelHook
from diffusers.hooks.hooks import CacheContext
from torch import nn

from vidrt.core.errors import VidrtError
from vidrt.engine import attach
from vidrt.engine.attach import ContextHook
from vidrt.engine.policies.contract import CallInfo, Policy
from vidrt.models.layout import call_order

FEATURE = "policy"


@dataclass
class _GenStats:
    steps: dict[int, list[int]] = field(default_factory=dict)   # step -> [calls, full calls]
    blocks_total: int = 0
    blocks_evaluated: int = 0


@dataclass
class _CallState:
    info: CallInfo
    evaluated: int = 0
    skipping: bool = False
    skipped: bool = False


def _feature(out):
    """The hidden-state part of a block output (UNet down blocks return (sample, res_samples))."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"policy: cannot read a feature from a block output of type {type(out).__name__}")


def _template(out):
    if isinstance(out, torch.Tensor):
        return (tuple(out.shape), out.dtype, out.device)
    if isinstance(out, (tuple, list)):
        return type(out)(_template(o) for o in out)
    return out


def _placeholder(tpl):
    """Zero-cost stand-in of a block output's shape (an expanded scalar: no memory, never read)."""
    if isinstance(tpl, tuple) and len(tpl) == 3 and isinstance(tpl[1], torch.dtype):
        shape, dtype, device = tpl
        return torch.zeros((), dtype=dtype, device=device).expand(shape)
    if isinstance(tpl, (tuple, list)):
        return type(tpl)(_placeholder(t) for t in tpl)
    return tpl


def _first_tensor_arg(args, kwargs, names: Sequence[str]):
    for n in names:
        if isinstance(kwargs.get(n), torch.Tensor):
            return kwargs[n]
    for a in args:
        if isinstance(a, torch.Tensor):
            return a
    return None


class Controller:
    """Holds the attached policies, the step/stream bookkeeping and the stats of one denoiser."""

    def __init__(self, denoiser: nn.Module, policies: list[Policy], scheduler=None, num_steps: int | None = None):
        self.den = denoiser
        self.policies = policies
        self.structure = call_order(denoiser)
        block = [p for p in policies if p.kind == "block"]
        if len(block) > 1:
            raise VidrtError("acceleration.policy: at most one block policy (taylor_gate / step_rehash / trained) "
                             f"may be combined; got {', '.join(p.name for p in block)}")
        self.block_policy = block[0] if block else None
        self.step_policies = [p for p in policies if p.kind != "block"]
        for p in policies:
            p.bind(self.structure)
            p.num_steps_hint = num_steps
        self.layout = self.block_policy.layout(self.structure) if self.block_policy else None
        self.scheduler = scheduler
        self.num_steps = num_steps
        self._index = {id(b): i for i, b in enumerate(self.structure.blocks)}
        self._current: _CallState | None = None
        self._templates: dict[int, Any] = {}
        self._installed = False
        self._reset_generation(timesteps=None)

    # ---- generation / step bookkeeping ---------------------------------------------------------
    def _reset_generation(self, timesteps) -> None:
        self.timesteps = None if timesteps is None else [float(t) for t in torch.as_tensor(timesteps).flatten().tolist()]
        self._pending_reset = False
        self._cur_step: int | None = None
        self._cur_t: float | None = None
        self._calls_in_step = 0
        self._name_counts = {}
        self._templates = {}
        self.gen = _GenStats()
        for p in self.policies:
            p.reset()

    def _on_set_timesteps(self, scheduler) -> None:
        self._reset_generation(getattr(scheduler, "timesteps", None))

    def _locate(self, tv: float, context: CacheContext | None) -> tuple[int, str, int | None]:
        name = context.name if context is not None else None
        step = context.step_index if context is not None else None
        n = ((context.num_inference_steps if context is not None else None)
             or (len(self.timesteps) if self.timesteps else None) or self.num_steps)
        if step is not None:
            if self._cur_step is not None and step < self._cur_step:
                self._reset_generation(None)
        elif self._cur_t is not None and tv > self._cur_t + 1e-6:
            self._reset_generation(None)
        if step is None:
            if self.timesteps:
                step = min(range(len(self.timesteps)), key=lambda i: abs(self.timesteps[i] - tv))
            elif self._cur_t is None:
                step = 0
            elif abs(tv - self._cur_t) <= 1e-6:
                step = self._cur_step
            else:
                step = self._cur_step + 1
        if step != self._cur_step:
            self._calls_in_step = 0
            self._name_counts: dict[str, int] = {}
        if name is None:
            stream = f"call{self._calls_in_step}"
        else:
            # the same context twice in one step (e.g. one call per context window): separate streams
            k = self._name_counts.get(name, 0)
            self._name_counts[name] = k + 1
            stream = name if k == 0 else f"{name}#{k}"
        self._calls_in_step += 1
        self._cur_step, self._cur_t = step, tv
        return int(step), stream, (int(n) if n else None)

    def _step_size(self, step: int) -> float:
        """How far this step's prediction moves the sample, relative to the schedule's mean step: a forecast's
        error reaches the latents scaled by it (flow matching with shift=3 takes ~9x longer steps at the end
        than at the start)."""
        ts = self.timesteps
        if not ts or step >= len(ts) or ts[0] <= 0:
            return 1.0
        nxt = ts[step + 1] if step + 1 < len(ts) else 0.0
        return max(0.0, ts[step] - nxt) / (ts[0] / len(ts))

    # ---- the denoiser call ---------------------------------------------------------------------
    def denoiser_call(self, module, inner, args, kwargs, context: CacheContext | None):
        if self._current is not None or module is not self.den:   # re-entrant call, or a deep copy: plain
            return inner(*args, **kwargs)
        x = _first_tensor_arg(args, kwargs, ("hidden_states", "sample"))
        t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        if isinstance(t, torch.Tensor):
            tv = float(t.detach().float().max()) if t.numel() else 0.0
        elif t is None:
            tv = float(self._cur_t - 1 if self._cur_t is not None else 0.0)
        else:
            tv = float(t)
        step, stream, n = self._locate(tv, context)
        info = CallInfo(step=step, stream=stream, num_steps=n, timestep=tv,
                        batch=int(x.shape[0]) if x is not None else 1, latents=x, step_size=self._step_size(step))
        cs = _CallState(info)
        self._current = cs

        # the step policies wrap the call outermost-first (built without a self-referencing closure: that cycle
        # would keep this controller, and the policies' tensors, alive until the cyclic collector runs)
        run = functools.partial(inner, *args, **kwargs)
        for p in reversed(self.step_policies):
            run = functools.partial(p.wrap_call, info, run)
        try:
            out = run()
        finally:
            self._current = None
        if self.block_policy is not None and cs.evaluated:
            self.block_policy.end_call(info, cs.skipped)
        self._count(cs)
        return out

    def _count(self, cs: _CallState) -> None:
        n = self.structure.n
        g = self.gen
        g.blocks_total += n
        g.blocks_evaluated += cs.evaluated
        rec = g.steps.setdefault(cs.info.step, [0, 0])
        rec[0] += 1
        rec[1] += int(cs.evaluated >= n)

    # ---- a block call --------------------------------------------------------------------------
    def block_call(self, module, inner, args, kwargs):
        cs = self._current
        idx = self._index.get(id(module))
        if cs is None or idx is None or self.structure.blocks[idx] is not module:
            return inner(*args, **kwargs)
        bp, lay = self.block_policy, self.layout
        if bp is None or lay is None or idx >= lay.deep_end:
            cs.evaluated += 1
            return inner(*args, **kwargs)
        last_deep = lay.deep_end - 1
        if idx == 0 and lay.decide_before and not cs.skipping and self._can_skip(-1, last_deep) \
                and bp.before_blocks(cs.info):
            cs.skipping = cs.skipped = True
        if cs.skipping:
            if idx == last_deep:
                tpl = self._templates[idx]
                rep = bp.replacement(cs.info)
                return rep.to(dtype=tpl[1], device=tpl[2]).reshape(tpl[0])
            tpl = self._templates.get(idx)
            x = _first_tensor_arg(args, kwargs, ("hidden_states",))
            if isinstance(tpl, tuple) and len(tpl) == 3 and isinstance(tpl[1], torch.dtype) and x is not None \
                    and tuple(x.shape) == tpl[0] and x.dtype == tpl[1]:
                return x                       # DiT: pass the residual stream through untouched
            return _placeholder(tpl)
        out = inner(*args, **kwargs)
        cs.evaluated += 1
        self._templates[idx] = _template(out)
        if idx == last_deep:
            bp.observe_deep(cs.info, _feature(out))
        elif idx in lay.decide_after:
            if bp.after_block(cs.info, idx, _feature(out)) and self._can_skip(idx, last_deep):
                cs.skipping = cs.skipped = True
        return out

    def _can_skip(self, idx: int, last_deep: int) -> bool:
        # every block that would be replaced must have a known output shape from an earlier full call
        return all(i in self._templates for i in range(idx + 1, last_deep + 1))

    # ---- install / uninstall -------------------------------------------------------------------
    def install(self, siblings: Sequence[Controller] = (), watch_scheduler: bool = True) -> None:
        """Hook the denoiser and its blocks; watch the scheduler's set_timesteps for this controller and its
        `siblings` (the controllers of a pipeline's other denoisers, Wan 2.2 A14B's second expert, installed with
        `watch_scheduler=False`), which share this one scheduler wrapper."""
        if attach.get_state(self.den, FEATURE) is not None:
            raise VidrtError("policy: the denoiser already has a policy attached; call vidrt.disable_policy first")
        attach.wrap_module(self.den, _DenoiserHook(self), FEATURE)
        for i, block in enumerate(self.structure.blocks):
            attach.wrap_module(block, _BlockHook(self), FEATURE)
        attach.set_state(self.den, FEATURE, self)
        sch = self.scheduler
        self._watching = watch_scheduler and sch is not None and hasattr(sch, "set_timesteps")
        if self._watching:
            group = (self, *siblings)

            def set_timesteps(call, *a, **k):
                out = call(*a, **k)
                for ctl in group:
                    ctl._on_set_timesteps(sch)
                return out

            attach.wrap_method(sch, "set_timesteps", set_timesteps, FEATURE)
        self._installed = True

    def uninstall(self) -> None:
        if not self._installed:
            return
        attach.detach(self.den, FEATURE)
        if getattr(self, "_watching", False):
            attach.detach(self.scheduler, FEATURE)
        self._installed = False

    # ---- stats ---------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        g = self.gen
        steps_total = len(g.steps)
        steps_full = sum(1 for calls, full in g.steps.values() if calls == full)
        out = {
            "name": "+".join(p.name for p in self.policies),
            "steps_total": steps_total,
            "steps_full": steps_full,
            "steps_skipped": steps_total - steps_full,
            "blocks_total": g.blocks_total,
            "blocks_evaluated": g.blocks_evaluated,
            "skipped_steps": sorted(s for s, (calls, full) in g.steps.items() if calls != full),
            "state_bytes": sum(p.state_bytes() for p in self.policies),
        }
        for p in self.policies:
            out.update(p.extra_stats())
        return {k: _json_safe(v) for k, v in out.items()}


def _json_safe(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)          # "inf": strict JSON has no infinity
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


class _DenoiserHook(ContextHook):
    """On the denoiser: every call goes through the controller (with the call's cache context)."""

    def __init__(self, ctl: Controller):
        super().__init__()
        self.ctl = ctl

    def new_forward(self, module, *args, **kwargs):
        return self.ctl.denoiser_call(module, self.fn_ref.original_forward, args, kwargs, self.cache_context)


class _BlockHook(ModelHook):
    """On each top-level block: the controller decides whether it runs."""

    def __init__(self, ctl: Controller):
        super().__init__()
        self.ctl = ctl

    def new_forward(self, module, *args, **kwargs):
        return self.ctl.block_call(module, self.fn_ref.original_forward, args, kwargs)
