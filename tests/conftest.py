"""Shared fixtures: tiny random-init pipelines of the real diffusers classes, and an in-process CLI."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))

from vidrt.cli import _quiet_libraries  # noqa: E402  (the CLI's own quieting: one line per stage)

_quiet_libraries()


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture()
def run_cli(monkeypatch):
    """Run `vidrt ...` in-process (typer's CliRunner), from the repo root; returns the click Result."""
    from typer.testing import CliRunner

    from vidrt.cli import app

    monkeypatch.chdir(REPO)
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=True)

    return run


@pytest.fixture()
def captured(monkeypatch):
    """Frames each render hands to the mp4 writer, one (F, H, W, 3) uint8 array per call (compared before the
    lossy encode)."""
    import numpy as np

    import vidrt.run.render as runner

    calls: list = []
    original = runner.write_video

    def capture(path, frames, fps, size, **kw):
        frames = list(frames)
        calls.append(np.stack(frames))
        return original(path, frames, fps, size, **kw)

    monkeypatch.setattr(runner, "write_video", capture)
    return calls
