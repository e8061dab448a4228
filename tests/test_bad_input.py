"""Issue 17: bad inputs that used to end in a traceback or a wrong result. Each one is refused with one line on
stderr naming the key or file and what to do, exit code 2 (130 after Ctrl-C), no output file and no checkpoint
(unless the render can resume from it) - and, where the config alone decides it, before any model loads."""
from __future__ import annotations

import json
import shlex
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from vidrt.config import check_request, load_config, parse_config
from vidrt.config.schema import SEED_MAX
from vidrt.core.errors import VidrtError
from vidrt.run.video import read_video

WAN = "samples/wan-random.yaml"


def clean_failure(result, *needles, out_dir=None):
    """exit 2, one `error:` line (the only stderr line) holding every needle, no traceback, nothing written."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    if out_dir is not None and out_dir.exists():
        assert [p.name for p in out_dir.iterdir()] == [], list(out_dir.iterdir())
    return lines[0]


def no_model_loads(monkeypatch):
    """Fail the test if anything tries to load a pipeline (the check must come first)."""
    import vidrt.run.render as render

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(render, "load_pipeline", refuse)


# ---------------------------------------------------------------------------------------- numbers
@pytest.mark.parametrize("override, needles", [
    ("guidance=.inf", ("guidance", "finite", "inf")),            # was: an all-black video, exit 0
    ("guidance=.nan", ("guidance", "finite", "nan")),
    ("guidance=1e30", ("guidance", "100")),                     # finite, but overflows the loop: black too
    ("seed=18446744073709551617", ("seed", "18446744073709551617", "0..18446744073709551615")),  # was: overflow
    ("seed=-1", ("seed", "-1")),
    ("steps=.inf", ("steps", "finite")),
    ("acceleration.threshold=.inf", ("acceleration.threshold", "finite")),
    ("acceleration.threshold=inf", ("acceleration.threshold", "finite")),     # YAML 1.1 reads inf as a word
    ("memory.budget=lots", ("memory.budget", "lots")),
    ("steps.x=1", ("--set", "steps is a single value", "--set steps=VALUE")),   # was: TypeError traceback
    ("memory.slicng=off", ("unknown key 'memory.slicng'", "did you mean 'memory.slicing'")),
    ("steps=1001", ("steps", "1000 timesteps")),                # was: ValueError traceback after loading
])
def test_bad_numbers_and_keys_refused_before_loading(run_cli, tmp_path, monkeypatch, override, needles):
    no_model_loads(monkeypatch)
    out = tmp_path / "out"
    result = run_cli("render", WAN, "-o", out / "x.mp4", "--set", override, "--set", "steps=1"
                     if not override.startswith("steps") else "frames=9")
    clean_failure(result, *needles, out_dir=out)


def test_seed_bound_is_what_torch_generator_accepts():
    assert parse_config(load_config_data(), [f"seed={SEED_MAX}"]).seed == SEED_MAX
    assert torch.Generator().manual_seed(SEED_MAX).initial_seed() == SEED_MAX
    with pytest.raises((RuntimeError, ValueError)):   # (torch's type and wording vary by version)
        torch.Generator().manual_seed(SEED_MAX + 1)
    with pytest.raises(VidrtError, match="seed"):
        parse_config(load_config_data(), [f"seed={SEED_MAX + 1}"])


def load_config_data():
    return {"model": {"family": "wan", "path": "x"}, "prompt": "p", "frames": 9, "height": 32, "width": 32}


# ---------------------------------------------------------------------------------------- long videos
def test_frames_beyond_host_memory_refused_before_loading(run_cli, tmp_path, monkeypatch):
    """400001 frames at 720x1280: the loop's full-length latents alone are ~0.5 TiB."""
    no_model_loads(monkeypatch)
    out = tmp_path / "out"
    result = run_cli("render", WAN, "-o", out / "x.mp4", "--set", "frames=400001", "--set", "height=720",
                     "--set", "width=1280")
    clean_failure(result, "frames: 400001 frames of 720x1280 need about", "host memory", "this machine has",
                  out_dir=out)


def test_host_memory_estimate_against_the_machine(repo, monkeypatch):
    """The refusal compares the estimate with the machine's memory (here: pretend machines of a few KiB)."""
    import vidrt.config.checks as config

    latents = 6 * 16 * 3 * 4 * 4 * 4   # CFG: six fp32 full-length tensors of 16 x 3 latent frames x 4 x 4
    on_gpu = load_config(repo / WAN, ["devices=[cuda]"])   # (the weights go to the device: not counted)
    monkeypatch.setattr(config, "host_memory", lambda: (latents, None))
    assert check_request(on_gpu) == []
    monkeypatch.setattr(config, "host_memory", lambda: (latents - 1, None))
    with pytest.raises(VidrtError, match=r"frames: 9 frames of 32x32 need about 18.00 KiB of host memory"):
        check_request(on_gpu)
    monkeypatch.setattr(config, "host_memory", lambda: (10 ** 12, latents - 1))
    assert check_request(on_gpu) == ["this render needs about 18.00 KiB of host memory (loop latents 18.00 KiB); "
                                     "only 18.00 KiB are free"]
    monkeypatch.setattr(config, "host_memory", lambda: (latents + 1000, None))
    with pytest.raises(VidrtError, match="weights"):   # on the CPU the weights stay in host memory too
        check_request(load_config(repo / WAN, ["devices=[cpu]"]))


def test_long_render_warns_with_its_work(run_cli, tmp_path, monkeypatch):
    """100001 frames fit in memory but take 1563 windows x steps x 2 CFG streams: one line with the figure,
    before the model loads (was: no estimate, hours of work)."""
    import vidrt.run.render as render

    def stop(*args, **kwargs):
        raise VidrtError("stopped before loading (test)")

    monkeypatch.setattr(render, "load_pipeline", stop)
    result = run_cli("render", WAN, "-o", tmp_path / "never.mp4", "--set", "frames=100001", "--set", "steps=1")
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert lines[0] == ("warning: 100001 frames: 1,563 context windows x 1 step x 2 CFG streams = 3,126 denoiser "
                        "calls (the model's native 81 frames: 2); Ctrl-C stops after a step, --resume continues")
    assert lines[-1].startswith("error: stopped before loading")


@pytest.mark.parametrize("frames, window, overlap", [(100001, None, None), (9, None, None), (85, None, None),
                                                     (333, 33, 8), (97, 17, 4), (101, 81, 76)])
def test_window_count_is_the_fewest_windows_that_cover_the_video(frames, window, overlap):
    """The count the work estimate prints: windows of the planned length cover every latent frame, neighbours
    share at least the overlap, and one window fewer could not (the total length bounds it from below)."""
    from vidrt.core.windows import window_plan, window_starts
    from vidrt.models.specs import SPECS

    plan = window_plan(SPECS["wan"], frames, 81, window, overlap)
    starts = window_starts(plan.total, plan.window, plan.overlap)
    covered = set()
    for s in starts:
        covered |= set(range(s, min(plan.total, s + plan.window)))
    assert covered == set(range(plan.total)) and plan.windows == len(starts)
    assert all(b - a <= plan.window - plan.overlap for a, b in zip(starts, starts[1:]))
    stride = plan.window - plan.overlap
    assert plan.windows == (1 if plan.total <= plan.window else -(-(plan.total - plan.window) // stride) + 1)


# ---------------------------------------------------------------------------------------- output paths
def test_output_path_is_a_folder(run_cli, tmp_path, monkeypatch):
    no_model_loads(monkeypatch)
    (tmp_path / "d.mp4").mkdir()
    result = run_cli("render", WAN, "-o", tmp_path / "d.mp4")   # was: a full render, then IsADirectoryError
    clean_failure(result, "output.path", "d.mp4 is a folder", "video.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.mp4"]
    assert list((tmp_path / "d.mp4").iterdir()) == []


def test_sidecar_path_is_a_folder(run_cli, tmp_path, monkeypatch):
    no_model_loads(monkeypatch)
    (tmp_path / "y.json").mkdir()
    result = run_cli("render", WAN, "-o", tmp_path / "y.mp4")
    clean_failure(result, "output.path", "y.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["y.json"]


def test_existing_checkpoint_is_not_replaced_without_resume(run_cli, tmp_path, monkeypatch):
    no_model_loads(monkeypatch)
    (tmp_path / "x.ckpt").mkdir()
    (tmp_path / "x.ckpt" / "state.pt").write_bytes(b"an unfinished render")
    result = run_cli("render", WAN, "-o", tmp_path / "x.mp4")   # was: silently overwritten, then deleted
    clean_failure(result, "x.ckpt", "--resume", "delete the folder")
    assert (tmp_path / "x.ckpt" / "state.pt").read_bytes() == b"an unfinished render"


# ---------------------------------------------------------------------------------------- model folders
def test_image_given_to_a_text_to_video_model(run_cli, tmp_path, monkeypatch):
    no_model_loads(monkeypatch)
    result = run_cli("render", WAN, "-o", tmp_path / "out" / "x.mp4", "--set", "image=samples/cond.png")
    clean_failure(result, "image:", "text-to-video", "in_channels 16", "remove image", out_dir=tmp_path / "out")


def test_image_to_video_model_without_image(run_cli, tmp_path, monkeypatch):
    no_model_loads(monkeypatch)
    result = run_cli("render", "samples/wan-i2v-random.yaml", "-o", tmp_path / "out" / "x.mp4", "--set", "image=null")
    clean_failure(result, "image:", "image-to-video", "in_channels 36", "needs image", out_dir=tmp_path / "out")


@pytest.mark.parametrize("adapter, needles", [
    ("samples/no-such-adapter", ("model.motion_adapter", "no such folder", "looked in")),
    ("samples/tiny-random-wan", ("model.motion_adapter", "no config.json", "MotionAdapter")),
    ("someone/no-such-adapter", ("model.motion_adapter", "not in the local cache")),   # HF_HUB_OFFLINE=1
])
def test_bad_motion_adapter(run_cli, tmp_path, monkeypatch, adapter, needles):
    no_model_loads(monkeypatch)
    result = run_cli("render", "samples/animatediff-random.yaml", "-o", tmp_path / "x.mp4", "--set",
                     f"model.motion_adapter={adapter}")
    clean_failure(result, *needles)


def _unreachable(*args, **kwargs):
    """What diffusers raises when the hub cannot be reached: an OSError from a connection error."""
    class ConnectError(Exception):
        pass

    try:
        raise ConnectError("[Errno -2] Name or service not known")
    except ConnectError as exc:
        raise OSError("x does not appear to have a file named config.json. Please check out the root cause in "
                      "the stacktrace above.") from exc


def test_hub_failures_are_one_line_in_words(monkeypatch):
    """was: `OSError: We couldn't connect to 'https://huggingface.co'` (motion adapter) and a message pointing
    to a stack trace that is not shown (model.path)."""
    import diffusers

    from vidrt.models import get_adapter

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(diffusers.MotionAdapter, "from_pretrained", _unreachable)
    with pytest.raises(VidrtError) as info:
        get_adapter("animatediff").load_kwargs("x", torch.float32, False, "someone/adapter")
    assert str(info.value) == ("model.motion_adapter: cannot load a MotionAdapter from someone/adapter: "
                               "huggingface.co could not be reached (no network?) and it is not in the local "
                               "Hugging Face cache")
    monkeypatch.setattr(diffusers.WanPipeline, "from_pretrained", _unreachable)
    with pytest.raises(VidrtError) as info:
        get_adapter("wan").load("someone/model")
    assert "stack" not in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).startswith("model.path: someone/model is not a local folder, and loading it as a "
                                      "Hugging Face hub id failed: huggingface.co could not be reached")


def test_relative_model_path_is_found_beside_the_config(tmp_path, repo, monkeypatch):
    """A config names its model relative to its own folder, and renders from any working directory."""
    (tmp_path / "project").mkdir()
    shutil.copytree(repo / "samples" / "tiny-random-wan", tmp_path / "project" / "model")
    (tmp_path / "project" / "c.yaml").write_text(
        "model: {family: wan, path: model}\nprompt: p\nframes: 9\nheight: 32\nwidth: 32\n")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    cfg = load_config("../project/c.yaml")
    assert cfg.model.path == str(tmp_path / "project" / "model")
    assert check_request(cfg) == []
    # a samples/ config names paths from the repository's root: found from the folders above it
    assert load_config(repo / WAN).model.path == str(repo / "samples" / "tiny-random-wan")
    # found nowhere: the message says where it looked (and, offline, that it is no cached hub id)
    with pytest.raises(VidrtError) as info:
        check_request(load_config(repo / WAN, ["model.path=samples/gone"]))
    text = str(info.value)
    assert "samples/gone is not a folder (looked in the working directory" in text
    assert f"beside the config in {repo / 'samples'}" in text and "not in the local cache" in text


# ---------------------------------------------------------------------------------------- console and Ctrl-C
def test_render_piped_into_head_completes_from_another_directory(tmp_path, repo):
    """`vidrt render ... 2>&1 | head -1` (was: exit 1, no video, a checkpoint left without a word), run from
    another working directory with the sample config's repo-relative model path (was: taken for a hub id)."""
    out = tmp_path / "x.mp4"
    proc = subprocess.Popen([sys.executable, "-m", "vidrt", "render", str(repo / WAN), "-o", str(out), "--set",
                             "steps=2"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    first = proc.stdout.readline()
    proc.stdout.close()   # the reader goes away, as `head -1` does after its line
    assert proc.wait(timeout=600) == 0, first
    assert read_video(out).shape == (9, 32, 32, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json", "x.mp4"]


def test_interrupt_exits_130_with_a_resume_command_that_works(run_cli, tmp_path, monkeypatch):
    """Ctrl-C after a step: exit 130 and a command that, pasted as printed, finishes the render (the config's
    real path and every --set, quoted for the shell)."""
    import os

    from vidrt.run.checkpoint import StepCheckpointer

    original = StepCheckpointer.save

    def save_then_interrupt(self, done, *args, **kwargs):
        original(self, done, *args, **kwargs)
        if done == 1:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(StepCheckpointer, "save", save_then_interrupt)
    out = tmp_path / "my out" / "x.mp4"
    result = run_cli("render", WAN, "-o", out, "--set", "steps=3", "--set", 'prompt=a "red" circle', "--quiet")
    assert result.exit_code == 130, result.output
    line = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")][0]
    assert "interrupted after step 1/3" in line and not out.exists()
    command = shlex.split(line.split("continue with: ", 1)[1])
    assert command == ["vidrt", "render", WAN, "-o", str(out), "--set", "steps=3", "--set", 'prompt=a "red" circle',
                       "--resume"]
    monkeypatch.setattr(StepCheckpointer, "save", original)
    resumed = run_cli(*command[1:], "--quiet")
    assert resumed.exit_code == 0, resumed.output
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["resumed_from_step"] == 1 and side["config"]["prompt"] == 'a "red" circle'
    assert sorted(p.name for p in out.parent.iterdir()) == ["x.json", "x.mp4"]


def test_overflowed_latents_are_refused_without_a_checkpoint(run_cli, tmp_path, monkeypatch):
    """A denoise that ends in NaN (float16 overflow, say) would decode to a blank video: refused, and its
    checkpoint removed (resuming would decode the same latents)."""
    import vidrt.run.render as render

    real = render.encode_and_denoise

    def overflow(*args, **kwargs):
        return real(*args, **kwargs) * float("nan")

    monkeypatch.setattr(render, "encode_and_denoise", overflow)
    out = tmp_path / "out"
    result = run_cli("render", WAN, "-o", out / "x.mp4", "--set", "steps=1", "--quiet")
    assert result.exit_code == 2 and "NaN" in result.stderr.splitlines()[-1]
    assert list(out.iterdir()) == []


def test_second_interrupt_mid_step_keeps_a_resumable_checkpoint(run_cli, tmp_path, monkeypatch):
    """A second Ctrl-C (or `kill`) stops inside a step: exit 130, and the last complete step's checkpoint with
    the command that continues it."""
    from vidrt.run.checkpoint import StepCheckpointer

    original = StepCheckpointer.save

    def save_then_stop(self, done, *args, **kwargs):
        original(self, done, *args, **kwargs)
        if done == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(StepCheckpointer, "save", save_then_stop)
    out = tmp_path / "x.mp4"
    result = run_cli("render", WAN, "-o", out, "--set", "steps=2", "--quiet")
    assert result.exit_code == 130
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: interrupted during a step; checkpoint in") and line.endswith("--resume")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.ckpt"]


def test_sigterm_unwinds_like_ctrl_c():
    import os

    from vidrt.cli import _stop_on_sigterm

    previous = signal.getsignal(signal.SIGTERM)
    try:
        _stop_on_sigterm()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)   # (the handler runs as soon as the call returns)
    finally:
        signal.signal(signal.SIGTERM, previous)
