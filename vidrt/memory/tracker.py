"""Real memory peaks, per stage and per module, on CUDA or CPU.

CUDA: the caching allocator's statistics (`memory_allocated` / `max_memory_allocated`, reset at every stage
boundary and folded into a whole-run peak).

CPU (and fake tensors, which is how `vidrt.simulate` predicts full-size peaks): a `TorchDispatchMode` that sees
every aten op, records each *new* tensor storage an op returns (views and in-place results share an input's
storage and are skipped) and notices its release through a weakref on the untyped storage. Parameters and the
tensors alive when a stage starts (its inputs) are reported apart from the activations the stage allocates.

Per-module activation peaks (opt-in) come from module forward pre/post hooks on the same dispatch counter: the
peak of live bytes while a module runs, minus the live bytes when it started, maximised over its calls.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from vidrt.core.tensors import module_bytes
from vidrt.memory.counter import LiveCounter
from vidrt.memory.report import stage_table

__all__ = ["MemoryTracker", "track_memory"]

MAX_TIMELINE = 200_000


class MemoryTracker:
    """Peak memory of a run on one device, per stage and (optionally) per module.

    >>> mem = MemoryTracker(torch.device("cpu"), track_modules=True)
    >>> with mem:
    ...     with mem.stage("denoise", params=[pipe.transformer]):
    ...         pipe.transformer(**inputs)
    >>> mem.peak_bytes, mem.stages, mem.modules

    `count_device` lets a tracker count tensors on one device type and report them as another: the simulator
    runs fake CPU tensors and reports the numbers as the accelerator's.
    """

    def __init__(self, device: torch.device | str | None = None, *, track_modules: Any = False, top_n: int = 10,
                 count_device: str | None = None, timeline: bool = True):
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None and count_device is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.count_device = count_device or self.device.type
        self.use_allocator = self.device.type == "cuda" and self.count_device == "cuda"
        self.top_n = top_n
        self.record_timeline = timeline
        self._track_modules = bool(track_modules)
        self._module_names: dict[int, str] = {}
        if track_modules is not False and track_modules is not True and track_modules is not None:
            self.watch(track_modules)
        self.stages: list[dict[str, Any]] = []
        self.timeline: list[tuple[float, int, str | None]] = []
        self._module_peaks: dict[str, int] = {}
        self._reset_state()

    # ---- public results ------------------------------------------------------------------------
    @property
    def peak_bytes(self) -> int:
        if self.use_allocator and self._active:
            self._fold_allocator_peak()
        return int(self._peak)

    @property
    def modules(self) -> list[dict[str, Any]]:
        items = sorted(self._module_peaks.items(), key=lambda kv: (-kv[1], kv[0]))
        return [{"name": n, "activation_bytes": int(b)} for n, b in items[: self.top_n] if b > 0]

    @property
    def param_bytes(self) -> int:
        """Bytes of all registered parameters/buffers resident on the tracked device."""
        return self._resident_bytes()

    # ---- registration --------------------------------------------------------------------------
    def watch(self, modules: Any, prefix: str | None = None) -> None:
        """Name modules for per-module reports: a pipeline (its components), a dict name->module, a module or a
        list of modules (named by class)."""
        self._track_modules = True
        for name, mod in self._named_roots(modules, prefix):
            if id(mod) in self._module_names:
                continue
            for sub_name, sub in mod.named_modules():
                self._module_names.setdefault(id(sub), f"{name}.{sub_name}" if sub_name else name)

    @staticmethod
    def _named_roots(modules: Any, prefix: str | None = None) -> list[tuple[str, nn.Module]]:
        if modules is None:
            return []
        if isinstance(modules, nn.Module):
            return [(prefix or type(modules).__name__, modules)]
        comps = getattr(modules, "components", None)
        if isinstance(comps, Mapping):
            modules = comps
        if isinstance(modules, Mapping):
            return [(str(k), v) for k, v in modules.items() if isinstance(v, nn.Module)]
        return [(type(m).__name__, m) for m in modules if isinstance(m, nn.Module)]

    # ---- context -------------------------------------------------------------------------------
    def _reset_state(self) -> None:
        self._active = False
        self._peak = 0
        self._t0 = time.perf_counter()
        self._stage: dict[str, Any] | None = None
        self._counter: LiveCounter | None = None
        self._hooks: list[Any] = []
        self._mod_stack: list[list[Any]] = []  # [name, live_at_entry, max_live]
        self._resident_modules: list[nn.Module] = []
        self._resident_ids: set[int] = set()

    def __enter__(self) -> MemoryTracker:
        self.stages = []
        self.timeline = []
        self._module_peaks = {}
        self._reset_state()
        self._active = True
        if self.use_allocator:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._peak = torch.cuda.memory_allocated(self.device)
        if not self.use_allocator or self._track_modules:
            self._counter = LiveCounter(self, self.count_device)
            self._counter.__enter__()
        if self._track_modules:
            from torch.nn.modules import module as _m

            self._hooks.append(_m.register_module_forward_pre_hook(self._pre_hook))
            self._hooks.append(_m.register_module_forward_hook(self._post_hook, always_call=True))
        self._record(self._current_total())
        return self

    def __exit__(self, *exc) -> None:
        self.end_stage()
        for h in self._hooks:
            h.remove()
        self._hooks = []
        if self._counter is not None:
            self._counter.__exit__(*exc)
        if self.use_allocator:
            self._fold_allocator_peak()
        self._record(self._current_total())
        self._active = False
        self._final_live = self._counter.live_bytes if self._counter is not None else 0
        self._counter = None

    # ---- stages --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def stage(self, name: str, params: Any = None) -> Iterator[MemoryTracker]:
        self.begin_stage(name, params=params)
        try:
            yield self
        finally:
            self.end_stage()

    def begin_stage(self, name: str, params: Any = None) -> None:
        self.end_stage()
        roots = [m for _, m in self._named_roots(params)]
        if self._track_modules and params is not None:
            self.watch(params)
        for m in roots:
            if id(m) not in self._resident_ids:
                self._resident_ids.add(id(m))
                self._resident_modules.append(m)
        if self.use_allocator:
            torch.cuda.synchronize(self.device)
            self._fold_allocator_peak()
            torch.cuda.reset_peak_memory_stats(self.device)
        live = self._live_bytes()
        resident = self._resident_bytes()
        stage_params = module_bytes(roots, self._param_device())
        if self.use_allocator:
            start_total = torch.cuda.memory_allocated(self.device)
            inputs = max(0, start_total - resident)
        else:
            start_total = resident + live
            inputs = live
        self._stage = {"name": name, "t0": time.perf_counter(), "param_bytes": stage_params,
                       "input_bytes": inputs, "start_total": start_total, "peak_total": start_total,
                       "peak_live": live, "start_live": live}
        self._record(start_total)

    def end_stage(self) -> None:
        st = self._stage
        if st is None:
            return
        if self.use_allocator:
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            self._fold_allocator_peak()
            activation = max(0, peak - st["start_total"])
        else:
            peak = st["peak_total"]
            activation = max(0, st["peak_live"] - st["start_live"])
        self._stage = None
        self.stages.append({
            "name": st["name"],
            "seconds": time.perf_counter() - st["t0"],
            "peak_bytes": int(peak),
            "param_bytes": int(st["param_bytes"]),
            "input_bytes": int(st["input_bytes"]),
            "activation_bytes": int(activation),
        })
        self._record(self._current_total())

    # ---- counting ------------------------------------------------------------------------------
    def _live_bytes(self) -> int:
        return self._counter.live_bytes if self._counter is not None else 0

    def _param_device(self) -> torch.device | None:
        # simulated (counting fake CPU tensors, reporting the accelerator): every registered module is resident
        return self.device if self.count_device == self.device.type else None

    def _resident_bytes(self) -> int:
        return module_bytes(self._resident_modules, self._param_device())

    def _current_total(self) -> int:
        if self.use_allocator:
            return torch.cuda.memory_allocated(self.device)
        return self._resident_cache() + self._live_bytes()

    def _resident_cache(self) -> int:
        key = len(self._resident_modules)
        if getattr(self, "_rc_key", None) != key:
            self._rc_key = key
            self._rc_val = self._resident_bytes()
        return self._rc_val

    def _fold_allocator_peak(self) -> None:
        self._peak = max(self._peak, torch.cuda.max_memory_allocated(self.device))

    def _on_change(self, live: int) -> None:
        if not self._active:
            return
        if self.use_allocator:
            total = None
        else:
            total = self._resident_cache() + live
            if total > self._peak:
                self._peak = total
        st = self._stage
        if st is not None:
            if live > st["peak_live"]:
                st["peak_live"] = live
            if total is not None and total > st["peak_total"]:
                st["peak_total"] = total
        for frame in self._mod_stack:
            if live > frame[2]:
                frame[2] = live
        if total is not None:
            self._record(total)

    def _record(self, total: int) -> None:
        if not self.record_timeline or not self._active:
            return
        if len(self.timeline) >= MAX_TIMELINE:
            self.timeline = self.timeline[::2]
        self.timeline.append((time.perf_counter() - self._t0, int(total),
                              self._stage["name"] if self._stage else None))

    def _pre_hook(self, module, args) -> None:
        name = self._module_names.get(id(module))
        if name is None:
            return
        live = self._live_bytes()
        self._mod_stack.append([name, live, live, module])

    def _post_hook(self, module, args, output) -> None:
        if not self._mod_stack or self._mod_stack[-1][3] is not module:
            # unbalanced (a module we do not name, or an exception unwinding): drop frames of this module
            for i in range(len(self._mod_stack) - 1, -1, -1):
                if self._mod_stack[i][3] is module:
                    del self._mod_stack[i:]
                    break
            return
        name, start, peak, _ = self._mod_stack.pop()
        if self.use_allocator:
            self._record(torch.cuda.memory_allocated(self.device))
        act = peak - start
        if act > self._module_peaks.get(name, -1):
            self._module_peaks[name] = act

    # ---- reports -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "device": str(self.device),
            "peak_bytes": self.peak_bytes,
            "param_bytes": self.param_bytes,
            "stages": [dict(s) for s in self.stages],
            "modules": self.modules,
            "timeline": [[round(t, 6), b, s] for t, b, s in self.timeline],
        }

    def table(self, title: str | None = None):
        return stage_table(self.stages, self.modules, peak_bytes=self.peak_bytes,
                           title=title or f"memory on {self.device}")


@contextlib.contextmanager
def track_memory(device: torch.device | str | None = None, **kwargs: Any) -> Iterator[MemoryTracker]:
    """`with vidrt.track_memory() as mem: ...` — real peak on CUDA (if available) or CPU."""
    mem = MemoryTracker(device, **kwargs)
    with mem:
        yield mem
