"""The memory table every command prints: one row per stage, then the top modules.

Every figure is in one unit scaled to the table's largest (KiB for a tiny model, GiB for a real one), named in
the column headers, so numbers line up and are never cut; module names are never cut either (a long one
folds onto a second line): `...resnets.0.conv1` and `...resnets.1.conv1` must stay apart.
"""
from __future__ import annotations

from vidrt.core.units import GiB, KiB, MiB

UNITS = (("GiB", GiB), ("MiB", MiB), ("KiB", KiB))


def byte_unit(largest: float | int | None) -> tuple[str, int]:
    """The unit (name, size) that shows `largest` with at least one digit before the point (bytes below 1 KiB)."""
    for name, size in UNITS:
        if largest is not None and abs(largest) >= size:
            return name, size
    return "B", 1


def scaled(n: float | int | None, size: int) -> str:
    if n is None:
        return "-"
    if size == 1:
        return f"{int(n)}"
    return f"{n / size:.2f}"


def stage_table(stages: list[dict], modules: list[dict] | None = None, *, peak_bytes: int | None = None,
                host_peak_bytes: int | None = None, title: str = "memory"):
    """A rich renderable: a table with one row per stage (peak, params, activations, seconds - predicted on a
    GPU model for a dry run) and the run's peak, then - when given - a table of the top modules' activation
    peaks, both in one unit."""
    from rich.console import Group
    from rich.table import Table

    figures = [s.get(k) for s in stages for k in ("peak_bytes", "param_bytes", "activation_bytes")]
    figures += [peak_bytes, host_peak_bytes] + [m.get("activation_bytes") for m in modules or []]
    unit, size = byte_unit(max((abs(f) for f in figures if f is not None), default=None))

    predicted = any("predicted_seconds" in s for s in stages)   # a dry run: what the stage would take on a GPU
    table = Table(title=title)
    table.add_column("stage", no_wrap=True)
    columns = (f"peak {unit}", f"params {unit}", f"activations {unit}", "predicted s" if predicted else "seconds")
    for col in columns:
        table.add_column(col, justify="right", no_wrap=True, min_width=len(col))
    for s in stages:
        secs = s.get("predicted_seconds" if predicted else "seconds")
        table.add_row(str(s["name"]), scaled(s.get("peak_bytes"), size), scaled(s.get("param_bytes"), size),
                      scaled(s.get("activation_bytes"), size), "-" if secs is None else f"{secs:.2f}")
    if peak_bytes is not None:
        table.add_row("[bold]run peak[/bold]", f"[bold]{scaled(peak_bytes, size)}[/bold]", "", "", "")
    if host_peak_bytes:
        table.add_row("host peak", scaled(host_peak_bytes, size), "", "", "")
    if not modules:
        return table
    top = Table(title="top modules by activation peak")
    top.add_column("module", overflow="fold", ratio=1)
    top.add_column(f"activations {unit}", justify="right", no_wrap=True, min_width=len(f"activations {unit}"))
    for m in modules:
        top.add_row(str(m["name"]), scaled(m["activation_bytes"], size))
    return Group(table, top)
