"""A policy (or a list to compose) from a config's `acceleration` mapping; every error is one line naming the
key (acceleration.<key>)."""
from __future__ import annotations

import inspect
from typing import Any

from vidrt.core.errors import VidrtError
from vidrt.engine.policies.adaptive import AdaptiveSkip
from vidrt.engine.policies.contract import Policy
from vidrt.engine.policies.rehash import StepRehash
from vidrt.engine.policies.taylor_gate import TaylorGate

POLICIES: dict[str, type[Policy]] = {
    "taylor_gate": TaylorGate,
    "step_rehash": StepRehash,
    "adaptive": AdaptiveSkip,
}
ALIASES = {
    "taylorgate": "taylor_gate", "cg_taylor": "taylor_gate", "taylor": "taylor_gate",
    "rehash": "step_rehash", "steprehash": "step_rehash", "deepcache": "step_rehash",
    "adaptive_skip": "adaptive", "adaptiveskip": "adaptive", "adaptivediffusion": "adaptive",
}
NONE_NAMES = ("none", "off", "", "null")


def _canonical(name: Any, key: str) -> str | None:
    if name is None:
        return None
    if not isinstance(name, str):
        raise VidrtError(f"{key}: expected a policy name, got {name!r}")
    low = name.strip().lower().replace("-", "_")
    if low in NONE_NAMES:
        return None
    low = ALIASES.get(low, low)
    if low not in POLICIES:
        raise VidrtError(f"{key}: unknown policy {name!r}; known: none, {', '.join(POLICIES)}")
    return low


def _params(cls: type[Policy]) -> list[str]:
    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]


def policy_from_config(acceleration: dict[str, Any] | None) -> Policy | list[Policy] | None:
    """A policy (or a list to compose, or None) from the config's `acceleration` mapping.

    {"policy": "taylor_gate", "threshold": 0.2, "warmup": 3}
    {"policy": ["adaptive", "taylor_gate"], "delta": 0.01, "threshold": 0.2}   # flat keys go to every policy
                                                                                # that takes them
    {"policy": ["adaptive", "taylor_gate"], "taylor_gate": {"warmup": 4}}      # or per-policy sub-mappings
    {"policy": "none"}
    Errors are one-line VidrtErrors naming the key (acceleration.<key>).
    """
    if acceleration is None:
        return None
    if hasattr(acceleration, "as_dict"):
        acceleration = acceleration.as_dict()
    elif hasattr(acceleration, "model_dump"):
        acceleration = acceleration.model_dump()
    if not isinstance(acceleration, dict):
        raise VidrtError(f"acceleration: expected a mapping, got {type(acceleration).__name__}")
    raw = acceleration.get("policy", "none")
    names_raw = raw if isinstance(raw, (list, tuple)) else [raw]
    names = [n for n in (_canonical(r, "acceleration.policy") for r in names_raw) if n is not None]
    if len(set(names)) != len(names):
        raise VidrtError(f"acceleration.policy: a policy is listed twice in {list(names_raw)!r}")
    rest = {k: v for k, v in acceleration.items() if k != "policy"}
    if not names:
        if any(v is not None for v in rest.values()):
            key = next(k for k, v in rest.items() if v is not None)
            raise VidrtError(f"acceleration.{key}: set, but acceleration.policy is none")
        return None
    accepted = {n: _params(POLICIES[n]) for n in names}
    for key in rest:
        if key in POLICIES or key in ALIASES:
            if _canonical(key, f"acceleration.{key}") not in names:
                raise VidrtError(f"acceleration.{key}: settings for a policy that acceleration.policy does not list")
            continue
        if not any(key in params for params in accepted.values()):
            known = sorted({p for params in accepted.values() for p in params})
            raise VidrtError(f"acceleration.{key}: unknown setting for {'+'.join(names)}; known: {', '.join(known)}")
    built = []
    for n in names:
        settings = {k: v for k, v in rest.items() if k in accepted[n] and v is not None}
        origin = {k: "acceleration." for k in settings}
        for key, val in rest.items():
            if (key in POLICIES or key in ALIASES) and _canonical(key, "acceleration") == n:
                if not isinstance(val, dict):
                    raise VidrtError(f"acceleration.{key}: expected a mapping of {n} settings, got {val!r}")
                for sub in val:
                    if sub not in accepted[n]:
                        raise VidrtError(f"acceleration.{key}.{sub}: unknown setting; known: {', '.join(accepted[n])}")
                    origin[sub] = f"acceleration.{key}."
                settings.update(val)
        try:
            built.append(POLICIES[n](**settings))
        except ValueError as exc:
            msg = str(exc).splitlines()[0]
            raise VidrtError(f"{origin.get(msg.split(':')[0], 'acceleration.')}{msg}") from None
    return built[0] if len(built) == 1 else built
