"""The profile's table and picture are readable at any scale: one byte unit suited to the data (KiB/MiB for the
tiny models, GiB for real ones), numbers and module names never cut, stage names in a legend, few ticks."""
from __future__ import annotations

import io

import pytest
from rich.console import Console

from vidrt.memory.report import byte_unit, stage_table
from vidrt.run.plot import render_plot, wrap_name

MiB, GiB = 2 ** 20, 2 ** 30
TINY = {
    "device": "cpu", "simulated": False, "peak_bytes": int(11.16 * MiB),
    "stages": [{"name": "text_encode", "peak_bytes": 393_482, "param_bytes": 339_968, "activation_bytes": 53_514,
                "seconds": 0.16},
               {"name": "denoise", "peak_bytes": int(6.08 * MiB), "param_bytes": int(5.45 * MiB),
                "activation_bytes": 314_060, "seconds": 12.93},
               {"name": "vae_decode", "peak_bytes": int(11.16 * MiB), "param_bytes": int(2.52 * MiB),
                "activation_bytes": int(2.86 * MiB), "seconds": 2.19}],
    "modules": [{"name": f"vae.decoder.up_blocks.2.resnets.{i}.conv{j}", "activation_bytes": 817_500}
                for i in range(2) for j in (1, 2)] + [{"name": "vae.decoder", "activation_bytes": int(2.05 * MiB)}],
    "timeline": [[0.0, 0, "text_encode"], [0.16, 393_482, "text_encode"], [0.17, 6 * MiB, "denoise"],
                 [13.1, 6 * MiB, "vae_decode"], [15.3, int(11.16 * MiB), "vae_decode"]],
}


def rendered(table, width: int = 80) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(table)
    return console.file.getvalue()


@pytest.mark.parametrize("largest, unit", [(900, "B"), (393_482, "KiB"), (11.16 * MiB, "MiB"), (13.6 * GiB, "GiB")])
def test_unit_suits_the_data(largest, unit):
    assert byte_unit(largest)[0] == unit


def test_table_of_a_tiny_model_is_whole_at_80_columns():
    text = rendered(stage_table(TINY["stages"], TINY["modules"], peak_bytes=TINY["peak_bytes"], title="tiny"))
    assert "…" not in text                            # nothing cut (was: "384.26 K…", "resn…", "activati…")
    for col in ("peak MiB", "params MiB", "activations MiB", "seconds"):
        assert col in text
    for row in ("0.38", "11.16", "12.93"):
        assert row in text
    for m in TINY["modules"]:                          # the names that differ only at the end stay apart
        assert m["name"] in text


def test_long_module_names_fold_instead_of_being_cut():
    name = "transformer.blocks.29.attn1.to_out.0.with.a.very.long.tail.that.needs.two.lines"
    text = rendered(stage_table([], [{"name": name, "activation_bytes": GiB}]), width=60)
    assert "…" not in text and "GiB" in text
    assert "".join(line.strip("│ ").split("│")[0].strip() for line in text.splitlines() if "│" in line
                   and "activations" not in line and "module" not in line).startswith(name[:40])


def test_wrap_name_breaks_at_dots_only():
    name = "vae.decoder.up_blocks.2.upsamplers.0.resample.0.some_long_part"
    lines = wrap_name(name, 30).split("\n")
    assert "".join(lines) == name and all(len(line) <= 31 for line in lines[:-1])
    assert wrap_name("short.name") == "short.name"


def test_plot_uses_the_data_unit_and_a_legend(monkeypatch):
    import matplotlib.axes

    seen = {}
    original = matplotlib.axes.Axes.set_ylabel

    def ylabel(self, label, *a, **k):
        seen.setdefault("ylabel", label)
        return original(self, label, *a, **k)

    monkeypatch.setattr(matplotlib.axes.Axes, "set_ylabel", ylabel)
    png = render_plot(TINY)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and seen["ylabel"] == "MiB"


def test_plot_path_must_be_a_png(repo, tmp_path):
    from vidrt.config import load_config
    from vidrt.core.errors import VidrtError
    from vidrt.run.commands import profile_command

    with pytest.raises(VidrtError, match=r"--plot: .*p.jpg must end in .png"):
        profile_command(load_config(repo / "samples" / "tiny.yaml"), dry_run=True, plot_path=tmp_path / "p.jpg")
    assert list(tmp_path.iterdir()) == []
