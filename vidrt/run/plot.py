"""The profile picture: memory over time with a band per stage, and the top modules' activation peaks."""
from __future__ import annotations

import io
from typing import Any

from vidrt.core.units import format_bytes


def render_plot(result: dict[str, Any]) -> bytes:
    """PNG bytes: memory over time with a band per stage, and the top modules' activation peaks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gib = 2 ** 30
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    timeline = result.get("timeline") or []
    simulated = result.get("simulated")
    if timeline:
        ts = [t for t, _, _ in timeline]
        bs = [b / gib for _, b, _ in timeline]
        ax1.step(ts, bs, where="post", color="black", lw=1)
        colors = ["#cfe2f3", "#d9ead3", "#fff2cc", "#f4cccc", "#ead1dc"]
        spans: list[list[Any]] = []
        for t, _, s in timeline:
            if s is None:
                continue
            if spans and spans[-1][0] == s:
                spans[-1][2] = t
            else:
                spans.append([s, t, t])
        for i, (name, a, b) in enumerate(spans):
            ax1.axvspan(a, max(b, a + 1e-6), color=colors[i % len(colors)], alpha=0.7, lw=0)
            ax1.text((a + b) / 2, max(bs) * 1.02 if bs else 0, name, ha="center", va="bottom", fontsize=8)
        ax1.set_xlabel("simulation time (s)" if simulated else "time (s)")
        ax1.set_ylim(0, max(bs) * 1.12 if bs and max(bs) > 0 else 1)
    else:  # no timeline: stage peaks as steps
        stages = result.get("stages", [])
        ax1.bar([s["name"] for s in stages], [s["peak_bytes"] / gib for s in stages], color="#6fa8dc")
    if simulated:
        ax1.set_title(f"simulated tensor memory (activations; peak {format_bytes(result.get('peak_bytes'))} incl. params)",
                      fontsize=9)
    else:
        ax1.set_title(f"memory on {result.get('device', '?')} (peak {format_bytes(result.get('peak_bytes'))})", fontsize=9)
    ax1.set_ylabel("GiB")
    mods = result.get("modules") or []
    if mods:
        names = [m["name"] for m in mods][::-1]
        vals = [m["activation_bytes"] / gib for m in mods][::-1]
        ax2.barh(range(len(names)), vals, color="#e69138")
        ax2.set_yticks(range(len(names)))
        ax2.set_yticklabels(names, fontsize=7)
        ax2.set_xlabel("activation peak (GiB)")
    ax2.set_title("top modules", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
