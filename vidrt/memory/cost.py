"""Operation costs of a forward, counted in the dispatch stream: `CostCounter` and the `Counts` it fills.

Why: the planner needs a run's *price in seconds* before the run. The simulator already executes the real
model classes at full size on fake tensors; counting each aten op's FLOPs, bytes touched and launches on
the way costs no data and little time, and a device table + efficiencies (vidrt.memory.timemodel) turn the
counts into seconds.

    with FakeTensorMode(), CostCounter() as cc:
        with cc.section("denoise"):
            model(x)
        cc.add_transfer(weight_bytes, "weights")      # streamed weights, windows, decode-to-host ...
    cc.counts.totals()                               # {"matmul": {"flops", "bytes", "launches"}, ...}

Counting rules (one op = one aten call seen below autograd / decompositions):
* FLOPs come from `torch.utils.flop_counter.flop_registry` (mm, addmm, bmm, baddbmm, convolution,
  scaled_dot_product_{flash,efficient,cudnn}_attention ...) plus CPU / overrideable SDPA variants with the
  same formula; every other op has 0 matmul FLOPs.
* bytes = elements x element size of every tensor argument and every tensor output (what a kernel touches;
  gathers count the rows they read, copy_/fill_ do not read their destination).
* composites that CUDA runs as one fused kernel but the CPU decomposes (F.rms_norm: `_fused_rms_norm` on
  CUDA, 8 ops on the CPU) are recorded as one op (input + weight + output bytes), not as their pieces.
* views and metadata (view, _unsafe_view, transpose, expand, slice, detach, alias, permute, squeeze, ...)
  and bare allocations (empty*) cost 0 bytes and 0 launches; every other op is one launch.
* copies between devices (`_to_copy` / `copy_` with different devices) are *transfers* ("h2d" / "d2h"),
  not launches; ops whose results live on a host device (`host_devices`; the simulator's fake CPU tensors
  stand for the accelerator and keeps host-side tensors on "meta") go to the category "host".
Ops are aggregated per section by signature (op name + shapes + dtype) with a count, so the per-op
(flops, bytes) pairs survive for a roofline sum and the record stays small (layers repeat).
`mark_serial()` flags the current section as one where the host waits on the device after every few ops
(diffusers' group offloading synchronises after each group), which the time model charges differently.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

CATEGORIES = ("matmul", "attention", "elementwise", "host")

_MATMUL = {"mm", "addmm", "bmm", "baddbmm", "_scaled_mm", "linear", "matmul", "convolution", "_convolution",
           "cudnn_convolution", "convolution_overrideable", "_slow_conv2d_forward", "conv2d", "conv3d",
           "cudnn_convolution_transpose", "miopen_convolution", "mkldnn_convolution"}
_VIEWS = {"view", "_unsafe_view", "_reshape_alias", "transpose", "t", "expand", "expand_as", "slice",
          "select", "detach", "alias", "permute", "unsqueeze", "squeeze", "as_strided", "unflatten", "split",
          "split_with_sizes", "chunk", "unbind", "narrow", "diagonal", "view_as", "view_as_real",
          "view_as_complex", "real", "imag", "unfold", "movedim", "lift_fresh", "_neg_view", "_conj",
          "resolve_conj", "resolve_neg", "_nested_view_from_buffer", "numpy_T", "mT", "mH", "adjoint",
          "positive"}
_ALLOC = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "empty_permuted",
          "_empty_affine_quantized", "set_", "record_stream", "resize_"}
_GATHER = {"embedding", "index_select", "index", "gather", "take", "_embedding_bag"}
_OVERWRITE = {"copy_", "fill_", "zero_", "normal_", "uniform_", "random_", "bernoulli_", "exponential_"}


def _sdpa_flops(q, k, v, *args, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return int(sdpa_flop_count(tuple(q.shape), tuple(k.shape), tuple(v.shape)))


_EXTRA_FLOPS = {"_scaled_dot_product_flash_attention_for_cpu": _sdpa_flops,
                "_scaled_dot_product_fused_attention_overrideable": _sdpa_flops,
                "_scaled_dot_product_attention_math": _sdpa_flops}


def _category(name: str) -> str:
    if "scaled_dot_product" in name or name in ("_flash_attention_forward", "_efficient_attention_forward",
                                                "flex_attention"):
        return "attention"
    return "matmul" if name in _MATMUL else "elementwise"


def _is_view(func) -> bool:
    name = func.__name__.split(".")[0]
    if name in _VIEWS:
        return True
    returns = func._schema.returns
    return bool(returns) and all(r.alias_info is not None and not r.alias_info.is_write for r in returns)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _tensors(obj) -> list[torch.Tensor]:
    return [x for x in tree_flatten(obj)[0] if isinstance(x, torch.Tensor)]


def _device(t: torch.Tensor) -> str:
    return t.device.type


# ------------------------------------------------------------------------------------------------ counts
@dataclass
class Counts:
    """Counted work per section. Plain data: add, scale, save to JSON, feed to vidrt.memory.timemodel.

    ops[section][signature] = [category, count, flops per op, bytes per op, dtype]
    transfers[section][kind] = [bytes, copies]      (host<->device)
    serial = sections where the host waits for the device after small groups of ops (e.g. diffusers' group
             offloading synchronises after every group), so launches cannot overlap device work."""

    ops: dict[str, dict[str, list]] = field(default_factory=dict)
    transfers: dict[str, dict[str, list]] = field(default_factory=dict)
    serial: set = field(default_factory=set)

    # -- building
    def add_op(self, section: str, sig: str, category: str, flops: int, nbytes: int, n: float = 1,
               dtype: str = "") -> None:
        row = self.ops.setdefault(section, {}).get(sig)
        if row is None:
            self.ops[section][sig] = [category, n, flops, nbytes, dtype]
        else:
            row[1] += n

    def add_transfer(self, section: str, nbytes: float, kind: str, copies: float = 1) -> None:
        row = self.transfers.setdefault(section, {}).setdefault(kind, [0.0, 0.0])
        row[0] += nbytes
        row[1] += copies

    # -- algebra (a workload = sum of counted pieces times how often they run)
    def _map(self, fn) -> "Counts":
        """A copy with every section renamed by fn(section) -> (new name, factor)."""
        out = Counts()
        for s, ops in self.ops.items():
            name, f = fn(s)
            for sig, (cat, n, fl, b, dt) in ops.items():
                out.add_op(name, sig, cat, fl, b, n * f, dt)
        for s, t in self.transfers.items():
            name, f = fn(s)
            for kind, (b, c) in t.items():
                out.add_transfer(name, b * f, kind, c * f)
        out.serial = {fn(s)[0] for s in self.serial}
        return out

    def scaled(self, factor: float, prefix: str | None = None) -> "Counts":
        """Every count times `factor`, or only the sections at/below `prefix` (e.g. 2 of 30 blocks run)."""
        def f(s):
            inside = prefix is None or s == prefix or s.startswith(prefix + "/")
            return s, factor if inside else 1.0
        return self._map(f)

    def __add__(self, other: "Counts") -> "Counts":
        out = self.scaled(1.0)
        for s, ops in other.ops.items():
            for sig, (cat, n, f, b, dt) in ops.items():
                out.add_op(s, sig, cat, f, b, n, dt)
        for s, t in other.transfers.items():
            for kind, (b, c) in t.items():
                out.add_transfer(s, b, kind, c)
        out.serial |= other.serial
        return out

    def renamed(self, prefix: str) -> "Counts":
        """Every section put under `prefix` ("blocks" -> "denoise/blocks"; the root "" -> "denoise")."""
        return self._map(lambda s: (f"{prefix}/{s}" if s else prefix, 1.0))

    def select(self, prefix: str) -> "Counts":
        """Only the sections equal to `prefix` or below it ("" selects the root section alone)."""
        def keep(s):
            return s == prefix or (prefix != "" and s.startswith(prefix + "/"))
        out = self._map(lambda s: (s, 1.0))
        out.ops = {s: o for s, o in out.ops.items() if keep(s)}
        out.transfers = {s: t for s, t in out.transfers.items() if keep(s)}
        out.serial = {s for s in out.serial if keep(s)}
        return out

    def marked_serial(self) -> "Counts":
        """A copy whose every section is serial."""
        out = self.scaled(1.0)
        out.serial = set(out.sections())
        return out

    def sections(self) -> list[str]:
        return sorted(set(self.ops) | set(self.transfers))

    # -- summaries
    def totals(self, prefix: str | None = None) -> dict[str, Any]:
        """{category: {flops, bytes, launches}} plus {"transfer": {kind: bytes}} over the selected sections."""
        src = self if prefix is None else self.select(prefix)
        out: dict[str, Any] = {c: {"flops": 0.0, "bytes": 0.0, "launches": 0.0} for c in CATEGORIES}
        for ops in src.ops.values():
            for cat, n, f, b, _ in ops.values():
                out[cat]["flops"] += n * f
                out[cat]["bytes"] += n * b
                out[cat]["launches"] += n
        out["transfer"] = {}
        for t in src.transfers.values():
            for kind, (b, _) in t.items():
                out["transfer"][kind] = out["transfer"].get(kind, 0) + b
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"ops": self.ops, "transfers": self.transfers, "serial": sorted(self.serial)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Counts":
        return cls({s: {k: list(r) for k, r in o.items()} for s, o in d.get("ops", {}).items()},
                   {s: {k: list(v) for k, v in t.items()} for s, t in d.get("transfers", {}).items()},
                   set(d.get("serial", ())))

    def dumps(self) -> str:
        return json.dumps(self.to_dict())


# ------------------------------------------------------------------------------------------------ counter
class CostCounter(TorchDispatchMode):
    """Counts FLOPs / bytes / launches / transfers of every aten op into `self.counts`, per `section`.

    Enter it *inside* FakeTensorMode (so it sees ops first); it stacks with other dispatch modes (the
    memory tracker) and never reads tensor data. `host_devices`: device types that are host memory ("meta"
    in the simulator, where fake CPU tensors are the accelerator; pass ("cpu",) on a real CUDA run)."""

    def __init__(self, counts: Counts | None = None, host_devices: tuple[str, ...] = ("meta",)):
        super().__init__()
        self.counts = counts if counts is not None else Counts()
        self.host_devices = tuple(host_devices)
        self._stack: list[str] = []
        self._sigs: dict[str, tuple[str, int, int, str]] = {}
        self._fused = 0
        self._fn_mode = _FusedOps(self)

    def __enter__(self):
        self._fn_mode.__enter__()
        try:
            return super().__enter__()
        except BaseException:
            self._fn_mode.__exit__(None, None, None)
            raise

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._fn_mode.__exit__(*exc)

    @property
    def current(self) -> str:
        return "/".join(self._stack)

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator["CostCounter"]:
        """Ops inside are recorded under `outer/name` (sections nest)."""
        self._stack.append(name)
        try:
            yield self
        finally:
            self._stack.pop()

    def add_transfer(self, nbytes: float, kind: str = "h2d", copies: int = 1) -> None:
        """Host<->device bytes the dispatch stream cannot see (streamed weights, windows, decode to host), in
        `copies` separate copies."""
        self.counts.add_transfer(self.current, float(nbytes), kind, copies)

    def mark_serial(self) -> None:
        """The current section runs with the host waiting on the device after small groups of ops."""
        self.counts.serial.add(self.current)

    def hook_module(self, module: torch.nn.Module, name: str) -> list:
        """Record `module`'s forwards under section `name` (forward hooks); returns the hook handles."""
        def pre(*_):
            self._stack.append(name)

        def post(*_):
            if self._stack and self._stack[-1] == name:
                self._stack.pop()
        return [module.register_forward_pre_hook(pre), module.register_forward_hook(post, always_call=True)]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        try:
            self._record(func, args, kwargs, out)
        except Exception:  # counting must never break the run it observes
            pass
        return out

    def _record(self, func, args, kwargs, out) -> None:
        if self._fused:
            return
        kind = _FUNC_KIND.get(func)
        if kind is None:
            name = func.__name__.split(".")[0]
            kind = _FUNC_KIND[func] = (name, name in _ALLOC or _is_view(func))
        name, free = kind
        if free:
            return
        outs = _tensors(out)
        if not outs:
            return
        ins = _tensors((args, kwargs))
        if name in ("_to_copy", "copy_", "to") and ins:
            src = ins[-1] if name == "copy_" else ins[0]
            dst = outs[0]
            if _device(src) != _device(dst):
                self.counts.add_transfer(self.current, float(_nbytes(src)), self._kind(src, dst))
                return
        host = all(_device(t) in self.host_devices for t in outs)
        shapes = ",".join("x".join(map(str, t.shape)) for t in ins)
        dtype = str(outs[0].dtype)[6:]
        sig = f"{func.__name__}|{shapes}->{'x'.join(map(str, outs[0].shape))}|{dtype}{'|host' if host else ''}"
        if name in _MATMUL or name in _EXTRA_FLOPS or "attention" in name:
            sig += "|" + repr([a for a in args if not isinstance(a, torch.Tensor)][:6])
        cached = self._sigs.get(sig)
        if cached is None:
            matmul_like = name in _MATMUL or "attention" in name
            cached = ("host" if host else _category(name), self._flops(func, name, args, kwargs, out),
                      self._bytes(name, ins, outs), str((ins[0] if ins and matmul_like else outs[0]).dtype)[6:])
            self._sigs[sig] = cached
        self.counts.add_op(self.current, sig, cached[0], cached[1], cached[2], 1, cached[3])

    def _kind(self, src: torch.Tensor, dst: torch.Tensor) -> str:
        s, d = _device(src) in self.host_devices, _device(dst) in self.host_devices
        return "h2d" if s and not d else "d2h" if d and not s else f"{_device(src)}->{_device(dst)}"

    @staticmethod
    def _flops(func, name, args, kwargs, out) -> int:
        from torch.utils.flop_counter import flop_registry

        fn = flop_registry.get(func._overloadpacket)
        if fn is not None:
            return int(fn(*args, **kwargs, out_val=out))
        if name in _EXTRA_FLOPS:
            return _EXTRA_FLOPS[name](*args, **kwargs)
        return 0

    @staticmethod
    def _bytes(name, ins, outs) -> int:
        out_b = sum(_nbytes(t) for t in outs)
        if name in _GATHER:           # a gather touches the rows it reads, not the whole table
            return 2 * out_b + sum(_nbytes(t) for t in ins if not t.is_floating_point())
        if name in _OVERWRITE and ins:  # the destination is written, not read
            return sum(_nbytes(t) for t in ins[1:]) + out_b
        return sum(_nbytes(t) for t in ins) + out_b


class _FusedOps(TorchFunctionMode):
    """Sees composite functions before they decompose: records one fused op for those CUDA fuses."""

    def __init__(self, counter: CostCounter):
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in _FUSED or self.counter._fused:
            return func(*args, **kwargs)
        self.counter._fused += 1
        try:
            out = func(*args, **kwargs)
        finally:
            self.counter._fused -= 1
        try:
            c = self.counter
            ins = [t for t in _tensors((args, kwargs))]
            outs = _tensors(out)
            if outs:
                host = all(_device(t) in c.host_devices for t in outs)
                shapes = ",".join("x".join(map(str, t.shape)) for t in ins)
                dtype = str(outs[0].dtype)[6:]
                out_shape = "x".join(map(str, outs[0].shape))
                sig = f"{_FUSED[func]}(fused)|{shapes}->{out_shape}|{dtype}{'|host' if host else ''}"
                nbytes = sum(_nbytes(t) for t in ins) + sum(_nbytes(t) for t in outs)
                c.counts.add_op(c.current, sig, "host" if host else "elementwise", 0, nbytes, 1, dtype)
        except Exception:
            pass
        return out


_FUSED = {torch.nn.functional.rms_norm: "rms_norm", torch.rms_norm: "rms_norm"}
_FUNC_KIND: dict = {}   # aten overload -> (name, costs nothing)
