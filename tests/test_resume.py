"""Per-step checkpoints: a render killed after step k and resumed gives identical frames (max abs diff 0);
checkpoints of another config or corrupt ones are refused; Ctrl-C stops after a step with a checkpoint."""
from __future__ import annotations

import numpy as np
import pytest

import vidrt.run.render as runner
from vidrt.run.checkpoint import StepCheckpointer, checkpoint_dir
from vidrt.config import load_config
from vidrt.core.errors import VidrtError

SAMPLES = {"wan": "samples/wan-random.yaml", "animatediff": "samples/animatediff-random.yaml",
           "i2vgen-xl": "samples/i2vgen-xl-random.yaml"}


class Killed(Exception):
    pass


@pytest.fixture()
def captured(monkeypatch):
    """Frames handed to the mp4 writer, per call (compared before encoding)."""
    calls: list[np.ndarray] = []
    original = runner.write_video

    def capture(path, frames, fps, size, **kw):
        frames = list(frames)
        calls.append(np.stack(frames))
        return original(path, frames, fps, size, **kw)

    monkeypatch.setattr(runner, "write_video", capture)
    return calls


def kill_after(monkeypatch, step: int):
    original = StepCheckpointer.save

    def save(self, done, *args, **kwargs):
        original(self, done, *args, **kwargs)
        if done == step:
            raise Killed(f"killed after step {done}")

    monkeypatch.setattr(StepCheckpointer, "save", save)
    return original


@pytest.mark.parametrize("family", list(SAMPLES))
def test_resume_after_kill_gives_identical_frames(family, repo, tmp_path, monkeypatch, captured):
    monkeypatch.chdir(repo)
    cfg = load_config(SAMPLES[family], ["steps=3"] + ([] if family == "wan" else ["frames=4"]))
    runner.render(cfg, tmp_path / "full.mp4", show_progress=False)
    assert not checkpoint_dir(tmp_path / "full.mp4").exists()  # removed after success

    original = kill_after(monkeypatch, 2)
    out = tmp_path / "x.mp4"
    with pytest.raises(Killed):
        runner.render(cfg, out, show_progress=False)
    assert not out.exists() and (checkpoint_dir(out) / "state.pt").is_file()
    monkeypatch.setattr(StepCheckpointer, "save", original)

    result = runner.render(cfg, out, show_progress=False, resume=True)
    assert result.sidecar["resumed_from_step"] == 2
    assert np.abs(captured[0].astype(int) - captured[1].astype(int)).max() == 0
    assert not checkpoint_dir(out).exists()


def test_resume_refuses_other_config_and_corrupt_checkpoint(repo, tmp_path, monkeypatch):
    monkeypatch.chdir(repo)
    cfg = load_config(SAMPLES["wan"], ["steps=3"])
    kill_after(monkeypatch, 1)
    out = tmp_path / "x.mp4"
    with pytest.raises(Killed):
        runner.render(cfg, out, show_progress=False)
    other = load_config(SAMPLES["wan"], ["steps=3", "seed=7"])
    with pytest.raises(VidrtError, match="made by another config"):
        runner.render(other, out, show_progress=False, resume=True)
    (checkpoint_dir(out) / "state.pt").write_bytes(b"truncated")
    with pytest.raises(VidrtError, match="corrupt"):
        runner.render(cfg, out, show_progress=False, resume=True)
    with pytest.raises(VidrtError, match="no checkpoint"):
        runner.render(cfg, tmp_path / "never.mp4", show_progress=False, resume=True)
    assert not out.exists()


def test_finished_denoise_resumes_to_decode_only(repo, tmp_path, monkeypatch, captured):
    """A run that failed in VAE decode keeps its final latents: --resume only decodes them."""
    monkeypatch.chdir(repo)
    cfg = load_config(SAMPLES["wan"], ["steps=2"])
    real = runner.decoded_frames

    def broken(*args, **kwargs):
        raise Killed("decode failed")

    monkeypatch.setattr(runner, "decoded_frames", broken)
    out = tmp_path / "x.mp4"
    with pytest.raises(Killed):
        runner.render(cfg, out, show_progress=False)
    monkeypatch.setattr(runner, "decoded_frames", real)
    result = runner.render(cfg, out, show_progress=False, resume=True)
    assert result.sidecar["resumed_from_step"] == 2 and result.frames == 9
    runner.render(cfg, tmp_path / "ref.mp4", show_progress=False)
    assert np.array_equal(captured[0], captured[1])


def test_interrupt_stops_after_step_with_checkpoint(repo, tmp_path, monkeypatch):
    monkeypatch.chdir(repo)
    cfg = load_config(SAMPLES["wan"], ["steps=4"])
    original = StepCheckpointer.save

    def save_then_interrupt(self, done, *args, **kwargs):
        original(self, done, *args, **kwargs)
        if done == 1:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does

    monkeypatch.setattr(StepCheckpointer, "save", save_then_interrupt)
    out = tmp_path / "x.mp4"
    with pytest.raises(runner.RenderInterrupted, match=r"after step \d/4.*--resume"):
        runner.render(cfg, out, show_progress=False)
    assert not out.exists() and (checkpoint_dir(out) / "state.pt").is_file()
