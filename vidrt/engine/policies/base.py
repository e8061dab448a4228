"""The step-policy contract: how a policy attaches to a denoiser and what it is told.

A *policy* decides whether a denoiser call, or the deep part of one, runs. It never edits weights and never
replaces a module's ``forward``: `enable_policy` swaps the class of the denoiser and of its top-level blocks
for a same-named subclass whose ``__call__`` consults the policy, and `disable_policy` swaps the original
classes back. Because ``nn.Module.__call__`` still ends in the instance's ``forward``, anything that patches
forwards in place (vidrt slicing, diffusers' own hooks) keeps working underneath, in any enable order.

What a policy sees, per denoiser call, is a `CallInfo`:

* ``step`` - the step index of this generation (0-based). Taken from the pipeline's ``cache_context``
  (``step_index`` on Wan), else from the position of the timestep in the scheduler's ``timesteps`` (the
  scheduler's ``set_timesteps`` is observed), else counted from changes of the timestep value.
* ``stream`` - the CFG stream. Wan calls the transformer once per stream inside
  ``transformer.cache_context("cond"|"uncond")``; the name of that context is the stream. Without a context,
  the k-th call at the same timestep is stream ``"call{k}"``. UNet pipelines (AnimateDiff, I2VGen-XL) send one
  batch of 2 = (uncond, cond); there a policy keeps its state per *batch half* (``CallInfo.batch``) - the
  histories are stored as stacked tensors (elementwise math never mixes halves) and every error/drift is
  measured per half, the decision taken only when all halves agree.
* a new generation (all per-generation state reset) starts when ``scheduler.set_timesteps`` is called, when
  the context's step index goes back, or (bare denoiser) when the timestep increases.

Two kinds of policy:

* ``kind = "step"``: wraps the whole denoiser call (`Policy.wrap_call`) and may return a cached output
  without running it (AdaptiveSkip).
* ``kind = "block"``: decides inside a call. The denoiser's blocks are laid out in call order
  (`Structure`): DiT - ``blocks[0..N-1]``; UNet - ``down_blocks + [mid_block] + up_blocks``. After each block
  before ``deep_end - 1`` the policy may say "skip" (`Policy.after_block`); the remaining blocks up to
  ``deep_end - 1`` then do not run (they return placeholders of the right shape without computing) and block
  ``deep_end - 1`` returns `Policy.replacement`. Blocks from ``deep_end`` on (the tail) always run.

Only one block policy may be active at a time; any number of step policies wrap it (a list composes).
Histories live in fp32 whatever the model dtype.
"""
from __future__ import annotations

import contextlib
import functools
import math
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from vidrt.core.errors import VidrtError

_ORIG = "_vidrt_orig_class"
_CTL = "_vidrt_policy_controller"


# ------------------------------------------------------------------------------------------------
# What a policy is told
# ------------------------------------------------------------------------------------------------
@dataclass
class CallInfo:
    step: int
    stream: str
    num_steps: int | None
    timestep: float
    batch: int                      # batch of the denoiser input; UNet+CFG: 2 halves (uncond, cond)
    latents: torch.Tensor | None    # the denoiser's input hidden_states / sample (not a copy)
    step_size: float = 1.0          # (t_step - t_next) / mean spacing of the schedule; 1.0 when the schedule is unknown

    @property
    def is_last(self) -> bool:
        return self.num_steps is not None and self.step >= self.num_steps - 1


@dataclass
class Structure:
    """The denoiser's top-level blocks in call order, as policies see them."""

    kind: str                       # "dit" or "unet"
    blocks: list[nn.Module]
    names: list[str]

    @property
    def n(self) -> int:
        return len(self.blocks)


def structure_of(denoiser: nn.Module) -> Structure:
    """Read the block layout structurally (never by model name)."""
    blocks = getattr(denoiser, "blocks", None) or getattr(denoiser, "transformer_blocks", None)
    if isinstance(blocks, nn.ModuleList) and len(blocks):
        attr = "blocks" if getattr(denoiser, "blocks", None) is blocks else "transformer_blocks"
        return Structure("dit", list(blocks), [f"{attr}.{i}" for i in range(len(blocks))])
    down, up = getattr(denoiser, "down_blocks", None), getattr(denoiser, "up_blocks", None)
    if isinstance(down, nn.ModuleList) and isinstance(up, nn.ModuleList) and len(down) and len(up):
        mods = list(down)
        names = [f"down_blocks.{i}" for i in range(len(down))]
        mid = getattr(denoiser, "mid_block", None)
        if isinstance(mid, nn.Module):
            mods.append(mid)
            names.append("mid_block")
        mods += list(up)
        names += [f"up_blocks.{i}" for i in range(len(up))]
        return Structure("unet", mods, names)
    raise VidrtError(f"policy: cannot find the blocks of {type(denoiser).__name__} (no blocks / down_blocks+up_blocks)")


@dataclass(frozen=True)
class Layout:
    """Blocks ``[0, deep_end-1)`` may end in a skip decision; ``deep_end-1`` outputs the deep feature."""

    deep_end: int
    decide_after: tuple[int, ...] = (0,)   # block indices after which `after_block` is asked
    decide_before: bool = False            # ask `before_blocks` before block 0 (DiT only: the residual stream
    #                                        passes a skipped block 0 untouched; a UNet's skip connections don't)


# ------------------------------------------------------------------------------------------------
# The policy base class
# ------------------------------------------------------------------------------------------------
class Policy:
    """Base class. Subclasses set `name` and `kind` and override the hooks they need."""

    name: str = "policy"
    kind: str = "step"              # "step" or "block"

    def __init__(self) -> None:
        self.num_steps_hint: int | None = None

    # lifecycle
    def bind(self, structure: Structure) -> None:
        """Called once when attached."""
        self.structure = structure

    def reset(self) -> None:
        """A new generation starts: drop every per-generation state."""

    def release(self) -> None:
        """The policy was detached: drop the tensors it holds between steps (the records of the last generation,
        e.g. TaylorGate.gate_errors, stay readable). On a GPU these are up to ~1 GiB (Wan 1.3B at 480p)."""

    # step-level
    def wrap_call(self, info: CallInfo, run: Callable[[], Any]) -> Any:
        return run()

    # block-level
    def layout(self, structure: Structure) -> Layout | None:
        return None

    def before_blocks(self, info: CallInfo) -> bool:
        """Asked before block 0 when the layout says `decide_before`: True replaces blocks 0..deep_end-1."""
        return False

    def after_block(self, info: CallInfo, index: int, feature: torch.Tensor) -> bool:
        return False

    def replacement(self, info: CallInfo) -> torch.Tensor:
        raise NotImplementedError

    def observe_deep(self, info: CallInfo, feature: torch.Tensor) -> None:
        """Block ``deep_end-1`` ran; `feature` is its output (a live tensor: copy what you keep)."""

    def end_call(self, info: CallInfo, skipped: bool) -> None:
        """The call finished; `skipped` tells whether the deep part was replaced."""

    # reporting
    def state_bytes(self) -> int:
        return 0

    def extra_stats(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        fields = {k: v for k, v in vars(self).items() if not k.startswith("_") and k not in ("structure", "num_steps_hint")
                  and isinstance(v, (int, float, str, bool, type(None)))}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in fields.items())})"


# ------------------------------------------------------------------------------------------------
# Helpers shared by the policies
# ------------------------------------------------------------------------------------------------
def fp32_copy(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to(torch.float32, copy=True)


def rel_error(estimate: torch.Tensor, actual: torch.Tensor, halves: int = 1) -> float:
    """mean|estimate-actual| / mean|actual|, per batch half, the worst half returned."""
    a = actual.detach().float()
    e = estimate.detach().float()
    if halves > 1 and a.shape[0] % halves == 0:
        a_parts, e_parts = a.chunk(halves, 0), e.chunk(halves, 0)
    else:
        a_parts, e_parts = (a,), (e,)
    worst = 0.0
    for ep, ap in zip(e_parts, a_parts):
        denom = float(ap.abs().mean())
        num = float((ep - ap).abs().mean())
        worst = max(worst, num / denom if denom > 0 else (0.0 if num == 0 else math.inf))
    return worst


class TaylorHistory:
    """Finite differences of one feature by step index, in fp32 (TaylorSeer-style divided differences).

    `min_gap`: the differences are taken against the last full step at least `min_gap` steps back (the
    *base*). A full step closer than that refreshes the value (order 0) and keeps the derivatives estimated
    over the wider baseline: step-to-step differences of a denoiser's features are noisy, and a secant over
    adjacent steps extrapolates worse than no extrapolation at all (measured on the trained sample model:
    order-1 error 0.086 vs order-0 0.058 one step ahead with an adjacent secant; 0.054 with a 5-step secant).
    min_gap=1 gives plain adjacent differences. Costs one extra tensor (the base value) at most."""

    def __init__(self, max_order: int, min_gap: int = 1) -> None:
        self.max_order = max_order
        self.min_gap = max(1, int(min_gap))
        self.terms: list[torch.Tensor] = []
        self.step: int | None = None
        self._base: list[torch.Tensor] = []
        self._base_step: int | None = None

    def update(self, x: torch.Tensor, step: int) -> None:
        x = fp32_copy(x)
        if self._base_step is None or step - self._base_step >= self.min_gap:
            new = [x]
            if self._base_step is not None and step > self._base_step:
                dist = float(step - self._base_step)
                for i in range(min(len(self._base), self.max_order)):
                    new.append((new[i] - self._base[i]) / dist)
            self.terms = new
            self._base, self._base_step = list(new), step
        else:
            self.terms = [x] + self.terms[1:]
        self.step = step

    @property
    def order(self) -> int:
        return len(self.terms) - 1

    def forecast(self, step: int, order: int | None = None) -> torch.Tensor:
        if not self.terms:
            raise RuntimeError("empty history")
        k = float(step - self.step)
        top = self.order if order is None else min(order, self.order)
        out = self.terms[0].clone()
        for i in range(1, top + 1):
            out.add_(self.terms[i], alpha=k ** i / math.factorial(i))
        return out

    def nbytes(self) -> int:
        seen = {id(t): t for t in self.terms + self._base}
        return sum(t.numel() * t.element_size() for t in seen.values())


def tensors_nbytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (list, tuple)):
        return sum(tensors_nbytes(o) for o in obj)
    if isinstance(obj, dict):
        return sum(tensors_nbytes(o) for o in obj.values())
    if hasattr(obj, "to_tuple"):
        return tensors_nbytes(obj.to_tuple())
    return 0


# ------------------------------------------------------------------------------------------------
# The controller: one per attached denoiser
# ------------------------------------------------------------------------------------------------
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
        self.structure = structure_of(denoiser)
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
        self._ctx: tuple[str, dict] | None = None
        self._current: _CallState | None = None
        self._templates: dict[int, Any] = {}
        self._installed = False
        self._sched_had_attr = False
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

    def _locate(self, tv: float) -> tuple[int, str, int | None]:
        name, kw = self._ctx if self._ctx is not None else (None, {})
        step = kw.get("step_index")
        n = kw.get("num_inference_steps") or (len(self.timesteps) if self.timesteps else None) or self.num_steps
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
    def denoiser_call(self, module, orig_cls, args, kwargs):
        if self._current is not None or module is not self.den:   # re-entrant call, or a deep copy: plain
            return orig_cls.__call__(module, *args, **kwargs)
        x = _first_tensor_arg(args, kwargs, ("hidden_states", "sample"))
        t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        if isinstance(t, torch.Tensor):
            tv = float(t.detach().float().max()) if t.numel() else 0.0
        elif t is None:
            tv = float(self._cur_t - 1 if self._cur_t is not None else 0.0)
        else:
            tv = float(t)
        step, stream, n = self._locate(tv)
        info = CallInfo(step=step, stream=stream, num_steps=n, timestep=tv,
                        batch=int(x.shape[0]) if x is not None else 1, latents=x, step_size=self._step_size(step))
        cs = _CallState(info)
        self._current = cs

        # the step policies wrap the call outermost-first (built without a self-referencing closure: that cycle
        # would keep this controller, and the policies' tensors, alive until the cyclic collector runs)
        run = functools.partial(orig_cls.__call__, module, *args, **kwargs)
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
    def block_call(self, module, orig_cls, args, kwargs):
        cs = self._current
        idx = self._index.get(id(module))
        if cs is None or idx is None or self.structure.blocks[idx] is not module:
            return orig_cls.__call__(module, *args, **kwargs)
        bp, lay = self.block_policy, self.layout
        if bp is None or lay is None or idx >= lay.deep_end:
            cs.evaluated += 1
            return orig_cls.__call__(module, *args, **kwargs)
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
        out = orig_cls.__call__(module, *args, **kwargs)
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

    # ---- cache_context (Wan) -------------------------------------------------------------------
    @contextlib.contextmanager
    def context(self, name: str, kw: dict):
        prev = self._ctx
        self._ctx = (name, kw)
        try:
            yield
        finally:
            self._ctx = prev

    # ---- install / uninstall -------------------------------------------------------------------
    def install(self) -> None:
        ctl = self
        den_cls = type(self.den)
        if getattr(den_cls, _ORIG, None) is not None:
            raise VidrtError("policy: the denoiser already has a policy attached; call vidrt.disable_policy first")
        ns: dict[str, Any] = {
            "__call__": lambda mod, *a, **k: ctl.denoiser_call(mod, den_cls, a, k),
            _ORIG: den_cls, _CTL: ctl, "__module__": den_cls.__module__, "__qualname__": den_cls.__qualname__,
            "__doc__": den_cls.__doc__,
        }
        if hasattr(den_cls, "cache_context"):
            @contextlib.contextmanager
            def cache_context(mod, name, **kw):
                with ctl.context(name, kw), den_cls.cache_context(mod, name, **kw):
                    yield
            ns["cache_context"] = cache_context
        self._den_dyn = type(den_cls.__name__, (den_cls,), ns)
        self._block_classes: list[type] = []
        made: dict[type, type] = {}
        for b in self.structure.blocks:
            cls = type(b)
            if cls not in made:
                def make(orig):
                    return type(orig.__name__, (orig,), {
                        "__call__": lambda mod, *a, **k: ctl.block_call(mod, orig, a, k),
                        _ORIG: orig, "__module__": orig.__module__, "__qualname__": orig.__qualname__,
                        "__doc__": orig.__doc__})
                made[cls] = make(cls)
            self._block_classes.append(cls)
        self._made = list(made.values())
        self.den.__class__ = self._den_dyn
        for b in self.structure.blocks:
            b.__class__ = made[type(b)]
        sch = self.scheduler
        if sch is not None and hasattr(sch, "set_timesteps"):
            self._sched_had_attr = "set_timesteps" in vars(sch)
            orig_set = sch.set_timesteps

            def set_timesteps(*a, **k):
                out = orig_set(*a, **k)
                ctl._on_set_timesteps(sch)
                return out

            sch.set_timesteps = functools.update_wrapper(set_timesteps, orig_set)
            self._orig_set = orig_set
        self._installed = True

    def uninstall(self) -> None:
        if not self._installed:
            return
        for b, cls in zip(self.structure.blocks, self._block_classes):
            b.__class__ = cls
        self.den.__class__ = getattr(self._den_dyn, _ORIG)
        # the swapped-in classes close over this controller; drop those references so the controller (and the
        # policies' tensors) are freed at once instead of by the next cyclic garbage collection
        for cls in [self._den_dyn, *self._made]:
            for name in ("__call__", "cache_context", _CTL):
                if name in vars(cls):
                    delattr(cls, name)
        self._made = []
        sch = self.scheduler
        if sch is not None and hasattr(self, "_orig_set"):
            if self._sched_had_attr:
                sch.set_timesteps = self._orig_set
            else:
                vars(sch).pop("set_timesteps", None)
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


# ------------------------------------------------------------------------------------------------
# Public verbs
# ------------------------------------------------------------------------------------------------
def _resolve(target):
    """(denoiser, scheduler) of a pipeline of any supported family, or of a bare denoiser."""
    if isinstance(target, nn.Module):
        return target, None
    try:
        from vidrt.models import adapter_for

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
    return getattr(type(den), _CTL, None)


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


# ------------------------------------------------------------------------------------------------
# Argument checks shared by constructors (messages start with the parameter name)
# ------------------------------------------------------------------------------------------------
def check_number(name: str, value, *, low: float | None = None, high: float | None = None, integer: bool = False,
                 allow_inf: bool = True):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    if integer and (not float(value).is_integer() if math.isfinite(value) else True):
        raise ValueError(f"{name}: expected an integer, got {value!r}")
    if math.isnan(value) or (not allow_inf and math.isinf(value)):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name}: must be >= {low}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{name}: must be <= {high}, got {value!r}")
    return int(value) if integer else float(value)
