"""The profile picture: memory over time with a band per stage, and the top modules' activation peaks.

Bytes are shown in the unit that suits the data (KiB for a tiny model, GiB for a real one: the table's unit),
stages are named in a legend (a short stage's label would overlap its neighbours'), axes carry a few ticks, and
module names are shown whole (a long one wraps at a dot), with each bar's figure beside it.
"""
from __future__ import annotations

import io
from typing import Any

from vidrt.core.units import format_bytes
from vidrt.memory.report import byte_unit

BAND_COLORS = ["#cfe2f3", "#d9ead3", "#fff2cc", "#f4cccc", "#ead1dc"]
WRAP = 44   # characters of a module name per line


def wrap_name(name: str, width: int = WRAP) -> str:
    """A dotted module name on lines of at most ~`width` characters, broken after dots (never inside a part)."""
    lines, line = [], ""
    for part in name.split("."):
        piece = part if not line else "." + part
        if line and len(line) + len(piece) > width:
            lines.append(line + ".")
            line = part
        else:
            line += piece
    lines.append(line)
    return "\n".join(lines)


def _largest(result: dict[str, Any]) -> float:
    values = [b for _, b, _ in result.get("timeline") or []]
    values += [s.get("peak_bytes") or 0 for s in result.get("stages") or []]
    values += [m.get("activation_bytes") or 0 for m in result.get("modules") or []]
    return max(values, default=0)


def render_plot(result: dict[str, Any]) -> bytes:
    """PNG bytes: memory over time with a band per stage, and the top modules' activation peaks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    unit, size = byte_unit(_largest(result))
    mods = result.get("modules") or []
    names = [wrap_name(str(m["name"])) for m in mods][::-1]
    lines = sum(n.count("\n") + 1 for n in names)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, max(4.5, 0.3 * lines + 1.5)),
                                   gridspec_kw={"width_ratios": [3, 2]})
    timeline = result.get("timeline") or []
    simulated = result.get("simulated")
    if timeline:
        ts = [t for t, _, _ in timeline]
        bs = [b / size for _, b, _ in timeline]
        spans: list[list[Any]] = []
        for t, _, s in timeline:
            if s is None:
                continue
            if spans and spans[-1][0] == s:
                spans[-1][2] = t
            else:
                spans.append([s, t, t])
        handles = []
        for i, (name, a, b) in enumerate(spans):
            color = BAND_COLORS[i % len(BAND_COLORS)]
            ax1.axvspan(a, max(b, a + 1e-6), color=color, alpha=0.7, lw=0)
            handles.append(Patch(color=color, alpha=0.7, label=name))
        ax1.step(ts, bs, where="post", color="black", lw=1)
        if handles:
            ax1.legend(handles=handles, title="stage", fontsize=8, title_fontsize=8, loc="upper left",
                       framealpha=0.9)
        ax1.set_xlabel("simulation time (s)" if simulated else "time (s)")
        ax1.set_ylim(0, max(bs) * 1.25 if bs and max(bs) > 0 else 1)   # room for the legend
    else:  # no timeline: stage peaks as bars
        stages = result.get("stages", [])
        ax1.bar([s["name"] for s in stages], [s["peak_bytes"] / size for s in stages], color="#6fa8dc")
        ax1.tick_params(axis="x", labelrotation=20)
    if simulated:
        ax1.set_title(f"simulated tensor memory (activations; peak {format_bytes(result.get('peak_bytes'))} "
                      "incl. params)", fontsize=9)
    else:
        ax1.set_title(f"memory on {result.get('device', '?')} (peak {format_bytes(result.get('peak_bytes'))})",
                      fontsize=9)
    ax1.set_ylabel(unit)
    ax1.xaxis.set_major_locator(MaxNLocator(8))
    ax1.yaxis.set_major_locator(MaxNLocator(6))
    if mods:
        vals = [m["activation_bytes"] / size for m in mods][::-1]
        ax2.barh(range(len(names)), vals, color="#e69138")
        ax2.set_yticks(range(len(names)))
        ax2.set_yticklabels(names, fontsize=7)
        ax2.set_xlabel(f"activation peak ({unit})")
        ax2.xaxis.set_major_locator(MaxNLocator(5))
        top = max(vals) if vals else 1
        ax2.set_xlim(0, top * 1.18 if top > 0 else 1)   # room for the figures beside the bars
        for y, v in enumerate(vals):
            ax2.text(v + top * 0.01, y, f"{v:.2f}", va="center", fontsize=7)
    ax2.set_title("top modules", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
