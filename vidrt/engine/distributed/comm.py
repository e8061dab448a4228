"""Process groups and the few collectives vidrt uses, each wrapped so that a failure on any rank surfaces
on every rank as one clear `DistributedError` instead of a hang or a backend traceback.

Layout: `world = cfg * sp` ranks. Ranks with the same `sp_rank` form a CFG group (they run different
guidance streams / batch halves); ranks with the same `cfg_rank` form a sequence-parallel group (they split
one denoiser call's tokens). Rank = cfg_rank * sp + sp_rank.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from vidrt.core.errors import VidrtError


class DistributedError(VidrtError):
    """A collective failed: another rank failed, exited or timed out. Every rank raises it."""


@dataclass
class Context:
    rank: int
    world: int
    device: torch.device
    backend: str
    cfg: int = 1                 # ranks that split the CFG streams / the batch
    sp: int = 1                  # ranks that split one call's tokens
    owns_process_group: bool = False
    groups: dict[str, Any] = field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def cfg_rank(self) -> int:
        return self.rank // self.sp

    @property
    def sp_rank(self) -> int:
        return self.rank % self.sp

    def describe(self) -> dict[str, Any]:
        return {"world": self.world, "rank": self.rank, "backend": self.backend, "cfg_parallel": self.cfg,
                "sequence_parallel": self.sp}


class _Simulated:
    """The group of a simulated context (`simulated_context`): collectives allocate their results as the real
    ones do and move nothing, so a fake-tensor run through the real hooks measures one rank's memory."""

    def __repr__(self) -> str:
        return "SIMULATED"


SIMULATED = _Simulated()


def simulated_context(world: int, rank: int = 0) -> Context:
    """Rank `rank` of a `world`-rank run without a process group (vidrt.simulate's per-rank prediction)."""
    return Context(rank=rank, world=world, device=torch.device("cpu"), backend="simulated")


def make_groups(ctx: Context, cfg: int, sp: int) -> None:
    """Create the CFG and sequence groups (collective: every rank calls it with the same sizes)."""
    if cfg * sp != ctx.world:
        raise VidrtError(f"distributed: cfg {cfg} x sequence {sp} != world size {ctx.world}")
    ctx.cfg, ctx.sp = cfg, sp
    ctx.groups = {}
    if ctx.backend == "simulated":
        ctx.groups = {"cfg": SIMULATED if cfg > 1 else None, "sp": SIMULATED if sp > 1 else None}
        return
    # new_group must be called by every rank for every group, in the same order.
    for s in range(sp):
        ranks = [c * sp + s for c in range(cfg)]
        g = dist.new_group(ranks) if cfg > 1 and cfg < ctx.world else (dist.group.WORLD if cfg > 1 else None)
        if ctx.rank in ranks:
            ctx.groups["cfg"] = g
    for c in range(cfg):
        ranks = [c * sp + s for s in range(sp)]
        g = dist.new_group(ranks) if sp > 1 and sp < ctx.world else (dist.group.WORLD if sp > 1 else None)
        if ctx.rank in ranks:
            ctx.groups["sp"] = g


def split_range(n: int, parts: int, index: int) -> tuple[int, int]:
    """[start, stop) of part `index` when n items are split into `parts` near-equal contiguous parts."""
    base, extra = divmod(n, parts)
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)


def _fail(op: str, exc: BaseException) -> DistributedError:
    rank = dist.get_rank() if dist.is_initialized() else "?"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return DistributedError(f"distributed: rank {rank}: {op} failed — another rank failed, exited or timed out "
                            f"({type(exc).__name__}: {first[:200]})")


def all_gather_cat(t: torch.Tensor, dim: int, group, sizes: list[int]) -> torch.Tensor:
    """Concatenate every rank's `t` along `dim` (rank order). `sizes[i]` = rank i's length along `dim`;
    shorter pieces are padded to the longest for the collective and trimmed after."""
    n = len(sizes)
    longest = max(sizes)
    t = t.contiguous()
    if t.shape[dim] < longest:
        pad_shape = list(t.shape)
        pad_shape[dim] = longest - t.shape[dim]
        t = torch.cat([t, t.new_zeros(pad_shape)], dim=dim)
    pieces = [torch.empty_like(t) for _ in range(n)]
    try:
        if group is not SIMULATED:
            dist.all_gather(pieces, t, group=group)
    except Exception as exc:  # noqa: BLE001 - every backend error means the same thing here
        raise _fail("all_gather", exc) from None
    if any(s < longest for s in sizes):
        pieces = [p.narrow(dim, 0, s) for p, s in zip(pieces, sizes)]
    return torch.cat(pieces, dim=dim)


def all_gather_list(t: torch.Tensor, group, n: int) -> list[torch.Tensor]:
    t = t.contiguous()
    pieces = [torch.empty_like(t) for _ in range(n)]
    try:
        if group is not SIMULATED:
            dist.all_gather(pieces, t, group=group)
    except Exception as exc:  # noqa: BLE001
        raise _fail("all_gather", exc) from None
    return pieces


def all_to_all(outputs: list[torch.Tensor], inputs: list[torch.Tensor], group) -> None:
    if group is SIMULATED:
        return
    try:
        dist.all_to_all(outputs, [i.contiguous() for i in inputs], group=group)
    except Exception as exc:  # noqa: BLE001
        raise _fail("all_to_all", exc) from None


def _pad_to(t: torch.Tensor, dim: int, length: int) -> torch.Tensor:
    if t.shape[dim] == length:
        return t.contiguous()
    pad_shape = list(t.shape)
    pad_shape[dim] = length - t.shape[dim]
    return torch.cat([t, t.new_zeros(pad_shape)], dim=dim)


def all_to_all_shaped(pieces: list[torch.Tensor], out_shapes: list[tuple[int, ...]], group) -> list[torch.Tensor]:
    """all_to_all of pieces whose shapes differ (uneven token / frame / position splits): gloo wants equal
    shapes, so every piece travels zero-padded to the largest shape of the exchange (the same on every rank,
    as each rank's pieces and outputs together span every split) and arrives trimmed to `out_shapes`."""
    big = tuple(max(dims) for dims in zip(*[tuple(p.shape) for p in pieces], *out_shapes))
    sent = []
    for p in pieces:
        if tuple(p.shape) == big:
            sent.append(p.contiguous())
            continue
        padded = p.new_zeros(big)
        padded[tuple(slice(0, d) for d in p.shape)] = p
        sent.append(padded)
    received = [torch.empty_like(sent[0]) for _ in out_shapes]
    all_to_all(received, sent, group)
    return [r[tuple(slice(0, d) for d in shape)] for r, shape in zip(received, out_shapes)]


def all_reduce_sum(t: torch.Tensor, group) -> torch.Tensor:
    t = t.contiguous()
    if group is SIMULATED:
        return t
    try:
        dist.all_reduce(t, group=group)
    except Exception as exc:  # noqa: BLE001
        raise _fail("all_reduce", exc) from None
    return t


def all_to_all_tokens(local: torch.Tensor, sizes: list[int], group) -> torch.Tensor:
    """Ulysses' exchange: `local` (N, B, n_local, ...) holds, for every rank j, this rank's tokens of rank j's
    heads; returns (B, n_tokens, ...) = every rank's tokens of this rank's heads, in rank order. Pieces travel
    padded to the longest share (gloo wants equal shapes); with equal shares and B = 1 the received buffer is
    the result, without a concatenating copy."""
    n, b, n_local = local.shape[:3]
    longest = max(sizes)
    rest = tuple(local.shape[3:])
    sent = list(local.unbind(0)) if n_local == longest else [_pad_to(p, 1, longest) for p in local.unbind(0)]
    buf = local.new_empty((n, b, longest) + rest)
    all_to_all(list(buf.unbind(0)), sent, group)
    del sent
    if b == 1 and all(sz == longest for sz in sizes):
        return buf.view((1, n * longest) + rest)
    return torch.cat([buf[i, :, :sz] for i, sz in enumerate(sizes)], dim=1)


def agree(ok: bool, what: str) -> None:
    """Every rank learns whether every rank reached this point without error (a tiny all-reduce);
    raises on all ranks when any rank reports failure."""
    flag = torch.tensor([0 if ok else 1], dtype=torch.int32)
    if dist.get_backend() == "nccl":
        flag = flag.cuda()
    try:
        dist.all_reduce(flag)
    except Exception as exc:  # noqa: BLE001
        raise _fail(f"agreement on {what}", exc) from None
    if int(flag.item()) and ok:
        raise DistributedError(f"distributed: rank {dist.get_rank()}: another rank failed during {what}")
