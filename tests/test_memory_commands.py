"""`vidrt profile` / `vidrt plan` command functions: JSON and PNG outputs, one-line errors."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from vidrt.core.errors import VidrtError
from vidrt.run.commands import plan_command, profile_command

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def config():
    from vidrt.config import load_config

    return load_config(ROOT / "samples/tiny.yaml", [])


def test_dry_run_profile_writes_json_and_png(config, tmp_path):
    out = tmp_path / "p.json"
    png = tmp_path / "p.png"
    result = profile_command(config, dry_run=True, json_path=out, plot_path=png, console=Console(file=io.StringIO()))
    data = json.loads(out.read_text())
    assert data["simulated"] is True and data["peak_bytes"] == result["peak_bytes"] > 0
    assert "host_peak_bytes" in data and data["modules"]
    assert [s["name"] for s in data["stages"]] == ["text_encode", "denoise", "vae_decode"]
    for s in data["stages"]:
        assert {"name", "peak_bytes", "param_bytes", "activation_bytes", "seconds"} <= set(s)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_outputs_and_budgets_are_one_line_errors(config, tmp_path):
    with pytest.raises(VidrtError, match="--plot"):
        profile_command(config, dry_run=True, plot_path=tmp_path / "missing" / "x.png")
    with pytest.raises(VidrtError, match="budget"):
        plan_command(config, "a lot", console=Console(file=io.StringIO()))
    with pytest.raises(VidrtError, match="cannot fit"):
        plan_command(config, "1KiB", console=Console(file=io.StringIO()))
