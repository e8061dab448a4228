"""Per-step checkpoints: a render killed after step k and resumed gives identical frames (max abs diff 0);
checkpoints of another config (naming the field that differs), of other weights or corrupt ones are refused;
Ctrl-C stops after a step with a checkpoint; checkpoints are device-independent (the generator's state is a
CPU tensor saved with the kind of generator that made it)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import vidrt.run.render as runner
from vidrt.run.checkpoint import StepCheckpointer, checkpoint_dir
from vidrt.config import load_config
from vidrt.core.errors import VidrtError

# under the repository (tests join them to the `repo` fixture: the suite runs from any working directory)
SAMPLES = {"wan": "samples/wan-random.yaml", "animatediff": "samples/animatediff-random.yaml",
           "i2vgen-xl": "samples/i2vgen-xl-random.yaml"}


class Killed(Exception):
    pass


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
    cfg = load_config(repo / SAMPLES[family], ["steps=3"] + ([] if family == "wan" else ["frames=4"]))
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


@pytest.mark.parametrize("family", ["wan", "animatediff"])
def test_video_to_video_resumes_to_identical_frames(family, repo, tmp_path, monkeypatch, captured):
    """A video-to-video render killed after a step resumes from its checkpoint without encoding or noising the
    clip again (the saved latents are the loop's; the generator continues from the saved state) and writes the
    same frames as an uninterrupted render."""
    from test_video_to_video import _clip

    clip = _clip(tmp_path / "in.mp4", frames=9)
    cfg = load_config(repo / SAMPLES[family], ["steps=5", "strength=0.8", f"input_video={clip}", "frames=9"])
    full = runner.render(cfg, tmp_path / "full.mp4", show_progress=False)
    assert full.sidecar["input_video"]["denoise_steps"] == 4
    original = kill_after(monkeypatch, 2)
    out = tmp_path / "x.mp4"
    with pytest.raises(Killed):
        runner.render(cfg, out, show_progress=False)
    monkeypatch.setattr(StepCheckpointer, "save", original)
    encodes = []
    real = runner.get_adapter(cfg.model.family).__class__.video_latents
    monkeypatch.setattr(type(runner.get_adapter(cfg.model.family)), "video_latents",
                        lambda self, *a, **k: (encodes.append(1), real(self, *a, **k))[1])
    result = runner.render(cfg, out, show_progress=False, resume=True)
    assert result.sidecar["resumed_from_step"] == 2 and encodes == []
    assert np.abs(captured[0].astype(int) - captured[1].astype(int)).max() == 0


def test_video_to_video_resume_refuses_another_clip_or_strength(repo, tmp_path, monkeypatch):
    """The checkpoint names the input clip by its content and the strength: a clip rewritten in place, or another
    strength, is another render."""
    from test_video_to_video import _clip

    clip = _clip(tmp_path / "in.mp4", frames=9)
    cfg = load_config(repo / SAMPLES["wan"], ["steps=5", f"input_video={clip}"])
    kill_after(monkeypatch, 1)
    out = tmp_path / "x.mp4"
    with pytest.raises(Killed):
        runner.render(cfg, out, show_progress=False)
    other = load_config(repo / SAMPLES["wan"], ["steps=5", f"input_video={clip}", "strength=0.9"])
    with pytest.raises(VidrtError, match=r"another config \(strength: checkpoint 0.7, now 0.9\)"):
        runner.render(other, out, show_progress=False, resume=True)
    _clip(clip, frames=11)                     # the same path, another clip
    with pytest.raises(VidrtError, match=r"another config \(input_video.bytes: checkpoint"):
        runner.render(cfg, out, show_progress=False, resume=True)
    assert not out.exists()


def test_resume_refuses_other_config_and_corrupt_checkpoint(repo, tmp_path, monkeypatch):
    cfg = load_config(repo / SAMPLES["wan"], ["steps=3"])
    kill_after(monkeypatch, 1)
    out = tmp_path / "x.mp4"
    with pytest.raises(Killed):
        runner.render(cfg, out, show_progress=False)
    other = load_config(repo / SAMPLES["wan"], ["steps=3", "seed=7"])
    with pytest.raises(VidrtError, match=r"made by another config \(seed: checkpoint 0, now 7\)"):
        runner.render(other, out, show_progress=False, resume=True)
    (checkpoint_dir(out) / "state.pt").write_bytes(b"truncated")
    with pytest.raises(VidrtError, match="corrupt"):
        runner.render(cfg, out, show_progress=False, resume=True)
    with pytest.raises(VidrtError, match="no checkpoint"):
        runner.render(cfg, tmp_path / "never.mp4", show_progress=False, resume=True)
    assert not out.exists()


def test_finished_denoise_resumes_to_decode_only(repo, tmp_path, monkeypatch, captured):
    """A run that failed in VAE decode keeps its final latents: --resume only decodes them."""
    cfg = load_config(repo / SAMPLES["wan"], ["steps=2"])
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
    cfg = load_config(repo / SAMPLES["wan"], ["steps=4"])
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


class FakeScheduler:
    def __init__(self):
        self.step_index = 1
        self.timesteps = torch.arange(4)


def test_checkpoint_names_the_weights(repo, tmp_path):
    """Same config, other weights in the model folder (here: a safetensors file whose header changed): refused,
    naming the file."""
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "model"
    shutil.copytree(repo / "samples" / "tiny-random-wan", folder)
    cfg = load_config(repo / SAMPLES["wan"], [f"model.path={folder}"]).model_dump(mode="json")
    StepCheckpointer(tmp_path / "x.mp4", cfg).save(1, 3, torch.zeros(2), FakeScheduler(), torch.Generator())
    assert StepCheckpointer(tmp_path / "x.mp4", cfg).load().step == 1
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    save_file({k: v.to(torch.float16) if k.endswith("bias") else v for k, v in tensors.items()}, weights)
    with pytest.raises(VidrtError, match=r"weights \(transformer/diffusion_pytorch_model.safetensors differs\)"):
        StepCheckpointer(tmp_path / "x.mp4", cfg).load()


def test_generator_state_is_device_independent(tmp_path, monkeypatch):
    """The saved state is a CPU uint8 tensor with the kind of generator that made it; restored into a generator
    of the render's device when the kinds match, else into a new generator of the saved kind (a CPU checkpoint
    resumed on CUDA: the CUDA generator is left alone, as its set_state would refuse the CPU state)."""
    from vidrt.run.checkpoint import restore_generator

    cfg = {"model": {"family": "wan", "path": "nowhere/at-all"}, "seed": 0}
    gen = torch.Generator().manual_seed(5)
    torch.randn(3, generator=gen)   # advance it
    StepCheckpointer(tmp_path / "x.mp4", cfg).save(1, 3, torch.zeros(2), FakeScheduler(), gen)
    saved = StepCheckpointer(tmp_path / "x.mp4", cfg).load().generator
    assert saved["device"] == "cpu"
    assert saved["state"].device.type == "cpu" and saved["state"].dtype == torch.uint8
    expected = torch.randn(4, generator=gen)

    fresh = torch.Generator().manual_seed(0)          # the render device's generator (CPU here)
    assert restore_generator(fresh, saved) is fresh
    assert torch.equal(torch.randn(4, generator=fresh), expected)

    class CudaGenerator:                               # what a CUDA render creates: refuses a CPU state
        device = torch.device("cuda", 0)

        def set_state(self, state):
            raise RuntimeError("set_state: a CPU state in a CUDA generator")

    resumed = restore_generator(CudaGenerator(), saved)
    assert isinstance(resumed, torch.Generator) and resumed.device.type == "cpu"
    assert torch.equal(torch.randn(4, generator=resumed), expected)

    notes = []   # a CUDA state resumed where there is no CUDA: the render's generator goes on, with a note
    cuda_state = {"device": "cuda", "state": torch.zeros(16, dtype=torch.uint8)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)   # (checked on GPU machines too)
    fresh = torch.Generator()
    assert restore_generator(fresh, cuda_state, warn=notes.append) is fresh and "CUDA" in notes[0]


def test_scheduler_step_draws_from_the_restored_generator(tmp_path):
    """On resume with a generator of another kind, the scheduler's own draws (`generator=` of its step) come
    from the restored one."""
    from types import SimpleNamespace

    from vidrt.run.checkpoint import Checkpoint
    from vidrt.run.steps import StepControl, step_hooks

    saved_gen = torch.Generator().manual_seed(3)
    saved = {"device": "cpu", "state": saved_gen.get_state()}
    seen = []

    class Scheduler:
        def step(self, *args, generator=None, **kwargs):
            seen.append(generator)
            return (torch.zeros(1),)

        def set_timesteps(self, *args, **kwargs):
            self.timesteps = torch.arange(3)

    class CudaGenerator:
        device = torch.device("cuda", 0)

    pipe = SimpleNamespace(scheduler=Scheduler())
    ckpt = Checkpoint(step=1, total_steps=3, latents=torch.zeros(1), scheduler={}, generator=saved, policy=None,
                      fingerprint="x")
    control = StepControl(total_steps=3, resume=ckpt)
    adapter = SimpleNamespace(pipeline_latents=lambda latents, req: latents)
    cuda_gen = CudaGenerator()
    denoiser = torch.nn.Linear(1, 1)
    with step_hooks(pipe, adapter, denoiser, None, cuda_gen, control, torch.device("cpu")):
        pipe.scheduler.step(torch.zeros(1), 0, torch.zeros(1), generator=cuda_gen)
    assert isinstance(seen[0], torch.Generator) and seen[0].device.type == "cpu"
    assert torch.equal(seen[0].get_state(), saved_gen.get_state())
