"""The one way vidrt attaches behaviour to a pipeline: named attachments with one undo and one order.

Every feature (slicing, the VAE decode, OOM fallback, distributed, long videos, step policies and the runner's
own step hooks) attaches through the four functions below under its feature name, and
`detach(target, feature)` removes everything that feature attached under `target` (a pipeline: its components
and their submodules, and the pipeline itself; a module: its submodules), newest first, putting back exactly
what was there. Four kinds, one per kind of thing a pipeline lets us wrap:

- `wrap_module`: a diffusers `ModelHook` around a module's forward (diffusers' HookRegistry). On one module,
  vidrt's hooks are kept in FEATURES order (inner -> outer) whatever the order of the enable calls; hooks
  other libraries registered (group offloading, caches) are left where they are.
- `replace_computation`: the module's own computation, innermost under every wrapper (diffusers hooks,
  accelerate hooks), whenever those were installed: the Feature Slicer swaps what a block computes while
  weight streaming and caches keep running around it. diffusers' registry offers no innermost position, so
  this is the one place that reaches into its function references (as does removing a hook from the middle
  of a chain, which diffusers' own remove_hook relinks wrongly).
- `wrap_method`: a method of an object that is not a module call (scheduler.step, pipeline.prepare_latents,
  pipeline.encode_prompt, vae._decode): a chain of wrappers in FEATURES order.
- `override_attribute`: a class-level attribute of one object (a property such as a pipeline's
  `_execution_device`), through a subclass made for that object and dropped with its last override.

A feature may also keep one state object per target (`set_state` / `get_state`), removed by `detach`.

Why this file is long: the four kinds share one ledger and one undo; split, each would reach into the others'.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, CacheContext, StateManager
from torch import nn

# Inner -> outer. A feature's wrappers sit inside those of every feature after it.
# policy < long: a long video's context windows each reach the policy as a call of their own (a stream per
# window and CFG stream, vidrt.engine.policies.controller), so block features and forecasts are per window.
FEATURES = ("slicing", "vae", "oom", "distributed", "policy", "long", "run")
# diffusers' weight-streaming hooks (group offloading): they move weights, never a block's tensors
STREAMING_HOOKS = ("group_offloading", "layer_execution_tracker", "lazy_prefetch_group_offloading")

_LEDGER = "_vidrt_attached"
_STATES = "_vidrt_state"
_METHODS = "_vidrt_methods"
_BASE_CLASS = "_vidrt_base_class"
_FIRST_HOOK = "_vidrt_first_hook"   # (vidrt made the registry, the module had its own forward attribute)
_MISSING = object()


def rank(feature: str) -> int:
    try:
        return FEATURES.index(feature)
    except ValueError:
        raise ValueError(f"unknown feature {feature!r}; known: {', '.join(FEATURES)}") from None


def hook_name(feature: str, part: str = "") -> str:
    """The HookRegistry name of a feature's hook (`part` tells several hooks of one feature apart)."""
    return f"vidrt_{feature}" + (f"_{part}" if part else "")


@dataclass
class _Attachment:
    feature: str
    kind: str
    key: str
    undo: Callable[[], None]


def _record(obj: Any, feature: str, kind: str, key: str, undo: Callable[[], None]) -> None:
    ledger = obj.__dict__.setdefault(_LEDGER, [])
    ledger.append(_Attachment(feature, kind, key, undo))


def _forget(obj: Any, feature: str, kind: str, key: str) -> _Attachment | None:
    ledger = obj.__dict__.get(_LEDGER) or []
    for i in range(len(ledger) - 1, -1, -1):
        a = ledger[i]
        if a.feature == feature and a.kind == kind and a.key == key:
            del ledger[i]
            return a
    return None


def attached(obj: Any, feature: str | None = None) -> list[tuple[str, str, str]]:
    """(feature, kind, key) of what is attached to this one object (not its children)."""
    return [(a.feature, a.kind, a.key) for a in obj.__dict__.get(_LEDGER) or ()
            if feature is None or a.feature == feature]


# --------------------------------------------------------------------------------------------- module hooks
class ArgumentsHook(ModelHook):
    """A hook that reads the wrapped forward's arguments by name (`self.arguments(module, args, kwargs)`),
    whatever mix of positional and keyword arguments the caller used."""

    signature: inspect.Signature | None = None

    def initialize_hook(self, module):
        self.signature = inspect.signature(type(module).forward)
        return module

    def arguments(self, module, args, kwargs) -> dict[str, Any]:
        bound = self.signature.bind_partial(module, *args, **kwargs).arguments
        bound.pop(next(iter(self.signature.parameters)))   # self
        return bound


class _NoState(BaseState):
    def reset(self, *args, **kwargs) -> None:
        pass


class ContextHook(ArgumentsHook):
    """A hook that diffusers tells which `cache_context` each call runs in (Wan pipelines call the denoiser
    inside `cache_context("cond" | "uncond", step_index=...)`; diffusers hands that to stateful hooks)."""

    _is_stateful = True

    def __init__(self):
        super().__init__()
        self.contexts = StateManager(_NoState)

    @property
    def cache_context(self) -> CacheContext | None:
        try:
            return self.contexts.context
        except ValueError:       # no cache_context around this call
            return None

    def reset_state(self, module):
        return module


def wrap_module(module: nn.Module, hook: ModelHook, feature: str, part: str = "") -> ModelHook:
    """Put `hook` around `module`'s forward (replacing this feature's hook of the same part)."""
    name = hook_name(feature, part)
    unwrap_module(module, feature, part)
    existing = getattr(module, "_diffusers_hook", None)
    if existing is None or not existing.hooks:    # the first hook: remember what to put back after the last
        module.__dict__[_FIRST_HOOK] = (existing is None, "forward" in module.__dict__)
    registry = HookRegistry.check_if_exists_or_initialize(module)
    mine = rank(feature)
    outer = [(n, h) for n, h in list(registry.hooks.items())
             if getattr(h, "_vidrt_feature", None) is not None and rank(h._vidrt_feature) > mine]
    for n, _ in reversed(outer):              # vidrt hooks of outer features come off and go back on top
        _unregister(registry, module, n)
    hook._vidrt_feature = feature
    registry.register_hook(hook, name)
    for n, h in outer:
        registry.register_hook(h, n)
    _record(module, feature, "hook", name, lambda: _remove_hook(module, name))
    return hook


def _unregister(registry: HookRegistry, module: nn.Module, name: str, deinitialize: bool = True) -> ModelHook:
    """`HookRegistry.remove_hook`, relinking right when hooks sit above the removed one: diffusers points the
    next hook's `forward` at what the removed one wrapped, but a hook with `new_forward` calls its
    `original_forward`, so every hook above would drop out of the chain. `deinitialize=False` skips the hook's
    own undo (diffusers' layerwise casting raises there rather than cast weights back)."""
    order, refs = registry._hook_order, registry._fn_refs
    i = order.index(name)
    ref = refs[i]
    inner = ref.original_forward if ref.original_forward is not None else ref.forward
    if i == len(order) - 1:
        module.forward = inner
    elif refs[i + 1].original_forward is not None:
        refs[i + 1].original_forward = inner
    else:
        refs[i + 1].forward = inner
    hook = registry.hooks.pop(name)
    if deinitialize:
        registry._module_ref = hook.deinitalize_hook(registry._module_ref)
    order.pop(i)
    refs.pop(i)
    return hook


def _remove_hook(module: nn.Module, name: str) -> None:
    registry = getattr(module, "_diffusers_hook", None)
    hook = registry.get_hook(name) if registry is not None else None
    if hook is not None:
        _unregister(registry, module, name)
        # the hook and its function reference point at each other: without this the hook (and what it holds,
        # e.g. a policy's histories on the GPU) would wait for the cyclic collector
        hook.fn_ref = None
    if registry is not None and not registry.hooks and _FIRST_HOOK in module.__dict__:
        _leave_bare(module, *module.__dict__.pop(_FIRST_HOOK))


def _leave_bare(module: nn.Module, made_registry: bool, had_forward: bool) -> None:
    """Undo what diffusers' registry did to a module that had no hooks before: drop the registry vidrt caused
    and the class's own forward that the registry left bound as an instance attribute."""
    if made_registry:
        del module._diffusers_hook
    forward = module.__dict__.get("forward")
    if not had_forward and getattr(forward, "__func__", None) is type(module).forward \
            and getattr(forward, "__self__", None) is module:
        del module.forward


def remove_diffusers_hook(module: nn.Module, name: str, *, made_registry: bool, had_forward: bool) -> None:
    """Take off a hook that a diffusers helper registered for vidrt (not through `wrap_module`), without the
    hook's own undo, relinking the hooks above it; when it was the last, leave the module as it was before
    (`made_registry`, `had_forward`: whether the registry and a `forward` attribute were vidrt's doing)."""
    registry = module._diffusers_hook
    hook = _unregister(registry, module, name, deinitialize=False)
    hook.fn_ref = None
    if not registry.hooks:
        _leave_bare(module, made_registry, had_forward)


def unwrap_module(module: nn.Module, feature: str, part: str = "") -> bool:
    name = hook_name(feature, part)
    found = _forget(module, feature, "hook", name)
    if found is not None:
        found.undo()
    return found is not None


def module_hook(module: nn.Module, feature: str, part: str = "") -> ModelHook | None:
    registry = getattr(module, "_diffusers_hook", None)
    return registry.get_hook(hook_name(feature, part)) if registry is not None else None


# ---------------------------------------------------------------------------------------- computation
def _innermost_slot(module: nn.Module):
    """(container, attribute) of the innermost forward: outside in, diffusers HookRegistry -> accelerate hook
    -> the forward itself (container None: the module's own `forward`)."""
    registry = getattr(module, "_diffusers_hook", None)
    refs = getattr(registry, "_fn_refs", None) if registry is not None else None
    if refs:
        ref = refs[0]
        return (ref, "original_forward") if ref.original_forward is not None else (ref, "forward")
    if hasattr(module, "_hf_hook") and hasattr(module, "_old_forward"):
        return module, "_old_forward"
    return None, "forward"


def _replace_in_chain(module: nn.Module, old: Callable, new: Any) -> bool:
    """Find `old` in the module's wrapper chain (wrappers may have been added on top since) and put `new`."""
    if module.__dict__.get("forward") is old:
        if new is _MISSING:
            del module.forward
        else:
            module.forward = new
        return True
    new_value = new if new is not _MISSING else type(module).forward.__get__(module)
    if getattr(module, "_old_forward", None) is old:
        module._old_forward = new_value
        return True
    registry = getattr(module, "_diffusers_hook", None)
    for ref in getattr(registry, "_fn_refs", None) or ():
        for attr in ("original_forward", "forward"):
            if getattr(ref, attr, None) is old:
                setattr(ref, attr, new_value)
                return True
    return False


class Computation:
    """What `replace_computation` put in place: `fn(module, *args, **kwargs)` bound to the module, and the
    computation that was there before (`call_original`)."""

    def __init__(self, module: nn.Module, fn: Callable, original: Any, info: dict):
        self.module, self.fn, self.original, self.info = module, fn, original, info
        self.bound = functools.partial(fn, module)

    def call_original(self, *args, **kwargs):
        if self.original is not _MISSING:
            return self.original(*args, **kwargs)
        return type(self.module).forward(self.module, *args, **kwargs)


_COMPUTATION = "_vidrt_computation"


def replace_computation(module: nn.Module, fn: Callable, feature: str, **info) -> bool:
    """Make `fn(module, *args, **kwargs)` the module's computation, innermost. False if this module's
    computation is already replaced."""
    if module.__dict__.get(_COMPUTATION) is not None:
        return False
    container, attr = _innermost_slot(module)
    original = module.__dict__.get("forward", _MISSING) if container is None else getattr(container, attr)
    comp = Computation(module, fn, original, dict(info, feature=feature))
    if container is None:
        module.forward = comp.bound
    else:
        setattr(container, attr, comp.bound)
    object.__setattr__(module, _COMPUTATION, comp)

    def undo():
        if not _replace_in_chain(module, comp.bound, comp.original):
            raise RuntimeError(f"vidrt: cannot find its forward on {type(module).__name__} to restore it")
        module.__dict__.pop(_COMPUTATION, None)

    _record(module, feature, "computation", "forward", undo)
    return True


def computation(module: nn.Module) -> Computation | None:
    return module.__dict__.get(_COMPUTATION)


def call_original(module: nn.Module, *args, **kwargs):
    """Run the computation that was in place before vidrt replaced it (normally the class's forward)."""
    comp = computation(module)
    if comp is not None:
        return comp.call_original(*args, **kwargs)
    return type(module).forward(module, *args, **kwargs)


@contextlib.contextmanager
def replaced_computation(module: nn.Module, fn: Callable, feature: str) -> Iterator[None]:
    """`replace_computation` for the duration of a block (frame parallel's GroupNorm inside one call)."""
    done = replace_computation(module, fn, feature)
    try:
        yield
    finally:
        if done:
            a = _forget(module, feature, "computation", "forward")
            if a is not None:
                a.undo()


# -------------------------------------------------------------------------------------------- methods
class _MethodChain:
    """The wrappers of one method of one object, outermost first when called."""

    def __init__(self, obj: Any, method: str):
        self.obj, self.method = obj, method
        self.original = obj.__dict__.get(method, _MISSING)
        self.wrappers: list[tuple[int, str, Callable]] = []   # (rank, feature, wrapper(call, *a, **k))

        def dispatch(*args, **kwargs):
            return self._dispatch(*args, **kwargs)

        # keeps the method's signature visible (pipelines inspect scheduler.step / set_timesteps parameters)
        self.dispatch = functools.update_wrapper(dispatch, getattr(obj, method))

    def base(self) -> Callable:
        if self.original is not _MISSING:
            return self.original
        return getattr(type(self.obj), self.method).__get__(self.obj)

    def _dispatch(self, *args, **kwargs):
        call = self.base()
        for _, _, wrapper in sorted(self.wrappers, key=lambda w: w[0]):    # innermost first
            call = functools.partial(wrapper, call)
        return call(*args, **kwargs)


def wrap_method(obj: Any, method: str, wrapper: Callable, feature: str) -> None:
    """Wrap `obj.method`: calls go through `wrapper(call, *args, **kwargs)`, which may call `call(...)` (the
    next inner wrapper, finally the method) or not. One wrapper per feature and method."""
    unwrap_method(obj, method, feature)
    chains = obj.__dict__.setdefault(_METHODS, {})
    chain = chains.get(method)
    if chain is None:
        chain = chains[method] = _MethodChain(obj, method)
        setattr(obj, method, chain.dispatch)
    chain.wrappers.append((rank(feature), feature, wrapper))
    _record(obj, feature, "method", method, lambda: _drop_wrapper(obj, method, feature))


def _drop_wrapper(obj: Any, method: str, feature: str) -> None:
    chains = obj.__dict__.get(_METHODS) or {}
    chain = chains.get(method)
    if chain is None:
        return
    chain.wrappers = [w for w in chain.wrappers if w[1] != feature]
    if chain.wrappers or obj.__dict__.get(method) is not chain.dispatch:
        return          # still in use, or someone wrapped it on top: the chain stays, calling what is left
    if chain.original is _MISSING:
        obj.__dict__.pop(method, None)
    else:
        setattr(obj, method, chain.original)
    del chains[method]
    if not chains:
        del obj.__dict__[_METHODS]


def unwrap_method(obj: Any, method: str, feature: str) -> bool:
    found = _forget(obj, feature, "method", method)
    if found is not None:
        found.undo()
    return found is not None


# ------------------------------------------------------------------------------------ class attributes
def override_attribute(obj: Any, name: str, value: Any, feature: str) -> None:
    """Set a class-level attribute (e.g. a property) for this one object only."""
    cls = type(obj)
    base = cls.__dict__.get(_BASE_CLASS)
    if base is None:
        sub = type(cls.__name__, (cls,), {"__module__": cls.__module__, "__qualname__": cls.__qualname__,
                                           "__doc__": cls.__doc__, _BASE_CLASS: cls})
        obj.__class__ = sub
        cls = sub
    setattr(cls, name, value)

    def undo():
        sub = type(obj)
        if name in sub.__dict__:
            delattr(sub, name)
        if set(sub.__dict__) <= {"__module__", "__qualname__", "__doc__", _BASE_CLASS, "__dict__",
                                 "__weakref__"}:
            obj.__class__ = sub.__dict__[_BASE_CLASS]

    _record(obj, feature, "attribute", name, undo)


# -------------------------------------------------------------------------------------------- state
def set_state(obj: Any, feature: str, state: Any) -> Any:
    obj.__dict__.setdefault(_STATES, {})[feature] = state
    return state


def get_state(obj: Any, feature: str) -> Any:
    return (obj.__dict__.get(_STATES) or {}).get(feature)


# -------------------------------------------------------------------------------------------- undo
def _objects_under(target: Any) -> list[Any]:
    """The target, and everything under it that may carry attachments."""
    if isinstance(target, nn.Module):
        return list(target.modules())
    seen: dict[int, Any] = {id(target): target}
    components = getattr(target, "components", None)
    for value in (components.values() if isinstance(components, dict) else ()):
        if isinstance(value, nn.Module):
            for m in value.modules():
                seen.setdefault(id(m), m)
        elif value is not None and hasattr(value, "__dict__"):
            seen.setdefault(id(value), value)
    return list(seen.values())


def detach(target: Any, feature: str) -> int:
    """Undo every attachment of `feature` under `target`, newest first; returns how many were undone."""
    rank(feature)
    undone = 0
    for obj in _objects_under(target):
        ledger = obj.__dict__.get(_LEDGER)
        if ledger:
            mine = [a for a in ledger if a.feature == feature]
            obj.__dict__[_LEDGER] = [a for a in ledger if a.feature != feature]
            for a in reversed(mine):
                a.undo()
                undone += 1
            if not obj.__dict__[_LEDGER]:
                del obj.__dict__[_LEDGER]
        states = obj.__dict__.get(_STATES)
        if states and feature in states:
            del states[feature]
            if not states:
                del obj.__dict__[_STATES]
    return undone
