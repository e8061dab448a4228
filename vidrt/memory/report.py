"""The memory table every command prints: one row per stage, then the top modules."""
from __future__ import annotations

from vidrt.core.units import format_bytes


def stage_table(stages: list[dict], modules: list[dict] | None = None, *, peak_bytes: int | None = None,
                host_peak_bytes: int | None = None, title: str = "memory"):
    """A rich Table: one row per stage (peak, params, activations, seconds), then the top modules."""
    from rich.table import Table

    table = Table(title=title)
    for col in ("stage", "peak", "params", "activations", "seconds"):
        table.add_column(col, justify="left" if col == "stage" else "right", no_wrap=True, overflow="ellipsis",
                         max_width=32 if col == "stage" else None)
    for s in stages:
        secs = s.get("seconds")
        table.add_row(str(s["name"]), format_bytes(s.get("peak_bytes")), format_bytes(s.get("param_bytes")),
                      format_bytes(s.get("activation_bytes")), "-" if secs is None else f"{secs:.2f}")
    if peak_bytes is not None:
        table.add_row("[bold]run peak[/bold]", f"[bold]{format_bytes(peak_bytes)}[/bold]", "", "", "")
    if host_peak_bytes:
        table.add_row("host peak", format_bytes(host_peak_bytes), "", "", "")
    if modules:
        table.add_section()
        table.add_row("[italic]top modules[/italic]", "", "", "", "")
    for m in modules or []:
        table.add_row(f"  {m['name']}", "", "", format_bytes(m["activation_bytes"]), "")
    return table
