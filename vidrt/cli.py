"""`vidrt` command line: render, models, profile, plan.

Every user error is one line on stderr ("error: <key>: <problem>") and exit code 2 (130 after Ctrl-C), with no
traceback and no output file left behind. What the config alone decides is checked before torch and diffusers
are imported (`vidrt models` and a bad config answer at once), and a console whose reader has gone (`| head`)
stops being written to instead of stopping the render.
"""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from vidrt.core.errors import VidrtError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="vidrt: memory-optimized video diffusion runtime (Wan 2.1, AnimateDiff, I2VGen-XL).")


class _PipeSafe:
    """A text stream that follows sys.stdout / sys.stderr (so in-process test runners still capture it) and, once
    the reader of a pipe has gone (`vidrt render ... 2>&1 | head -1`), drops what is written instead of raising
    BrokenPipeError: the render goes on and writes its files."""

    def __init__(self, name: str):
        self._name = name
        self.broken = False

    @property
    def _stream(self):
        return getattr(sys, self._name)

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._break()
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._break()

    def _break(self) -> None:
        self.broken = True
        try:   # later writes (and the interpreter's flush at exit) go nowhere instead of failing again
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass

    def isatty(self) -> bool:
        try:
            return bool(self._stream.isatty())
        except (OSError, ValueError, AttributeError):
            return False

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self._stream, "encoding", None) or "utf-8"

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


err = Console(file=_PipeSafe("stderr"))
out = Console(file=_PipeSafe("stdout"))

SetOption = Annotated[Optional[list[str]], typer.Option("--set", help="override a config key: a.b=value")]
GpuOption = Annotated[Optional[str], typer.Option("--gpu", help="GPU model the seconds are predicted for (and "
                                                 "budget auto sized for), e.g. rtx4090, h100; default: the GPU "
                                                 "present, else rtx4090")]
ConfigArg = Annotated[Path, typer.Argument(help="YAML config file", show_default=False)]


@app.callback()
def _setup() -> None:
    """Runs before every command (also when the app is invoked in-process). Imports nothing heavy: commands
    quiet diffusers and transformers (`_quiet_libraries`) once the config has passed its checks."""
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")


def user_errors(fn):
    """Turn VidrtError (and Ctrl-C) into one line on stderr and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except VidrtError as exc:
            err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(getattr(exc, "exit_code", 2)) from None
        except KeyboardInterrupt:
            err.print("[red]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper


@app.command()
@user_errors
def render(
    config: ConfigArg,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="output .mp4 (default: output.path)")] = None,
    set_: SetOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="continue from OUT.ckpt/ (the last complete step)")] = False,
    devices: Annotated[Optional[str], typer.Option("--devices", help="e.g. cuda:0,cuda:1: one torchrun rank per "
                                                   "device (see docs/DISTRIBUTED.md)")] = None,
):
    """Render a video from CONFIG; writes OUT.mp4 and OUT.json beside it.

    Every denoising step is checkpointed to OUT.ckpt/ (removed after success); after a crash or Ctrl-C,
    the same command with --resume continues from the last complete step."""
    from vidrt.config import check_request, load_config
    from vidrt.run.video import check_writable

    overrides = list(set_ or []) + ([f"devices=[{devices}]"] if devices else [])
    cfg = load_config(config, overrides)
    check_request(cfg)   # (again in run(), which prints its warnings): here before torch is imported
    check_writable(output or cfg.output.path, resume=resume, checkpoints=True)
    _quiet_libraries()
    from vidrt.engine.distributed.launch import relaunch_if_needed
    from vidrt.run.render import render as run

    code = relaunch_if_needed(cfg.devices, sys.argv[1:])
    if code is not None:  # the ranks rendered (rank 0 wrote the files)
        raise typer.Exit(code)
    result = run(cfg, output, console=err, show_progress=not quiet, resume=resume)
    side = result.sidecar
    if side.get("rank", 0) != 0:
        return  # only rank 0 writes and reports
    err.print(f"wrote {result.video_path} ({side['frames']} frames {side['width']}x{side['height']}), "
              f"{result.sidecar_path}; peak {side['peak_memory_bytes'] / 2**20:.1f} MiB, "
              f"{side['seconds_total']:.1f} s", highlight=False)


@app.command()
def models():
    """List the supported model families and what each needs."""
    from vidrt.models.specs import SPECS

    table = Table(title="vidrt model families")
    for col in ("family", "pipeline", "needs", "frames", "size", "native frames"):
        table.add_column(col)
    for a in SPECS.values():
        needs = "image" if a.needs_image else ("image optional (I2V)" if a.optional_image else "prompt")
        frames = "4k+1" if a.frame_rule == "4k+1" else "any"
        table.add_row(a.family, " / ".join(a.pipeline_class_names), needs, frames,
                      f"multiple of {a.size_multiple}", str(a.native_frames))
    out.print(table)
    for a in SPECS.values():
        out.print(f"[bold]{a.family}[/]: {a.description}", highlight=False)


@app.command()
@user_errors
def profile(
    config: ConfigArg,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="simulate full size without allocating")] = False,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="write the report as JSON")] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="write a PNG timeline + top modules")] = None,
    gpus: Annotated[int, typer.Option("--gpus", min=1, help="with --dry-run: the per-GPU peak of a torchrun over "
                                                            "this many GPUs (rank 0)")] = 1,
    gpu: GpuOption = None,
    set_: SetOption = None,
):
    """Peak memory per stage and per module (real run, or --dry-run simulation with predicted seconds)."""
    from vidrt.config import load_config

    cfg = load_config(config, set_ or [])
    _quiet_libraries()
    from vidrt.run.commands import profile_command

    profile_command(cfg, dry_run=dry_run, json_path=json_path, plot_path=plot, gpus=gpus, gpu=gpu)


@app.command()
@user_errors
def plan(
    config: ConfigArg,
    budget: Annotated[Optional[str], typer.Option("--budget", help="accelerator memory budget, e.g. 8GiB, or auto "
                                                   "(default: the config's memory.budget)")] = None,
    gpus: Annotated[int, typer.Option("--gpus", min=1, help="plan per GPU for a torchrun over this many GPUs "
                                                            "(weights replicated or sharded)")] = 1,
    gpu: GpuOption = None,
    set_: SetOption = None,
):
    """The fastest plan by predicted seconds (chunk sizes, offload, text-encoder placement, VAE tiling; fp8
    weights only where nothing native fits) that fits BUDGET; lists every candidate and prints the chosen
    `memory:` block."""
    from vidrt.config import load_config

    cfg = load_config(config, set_ or [])
    _quiet_libraries()
    from vidrt.run.commands import plan_command

    plan_command(cfg, budget, gpus=gpus, gpu=gpu)


def main() -> None:
    _stop_on_sigterm()
    app(prog_name="vidrt")


def _stop_on_sigterm() -> None:
    """`kill` (SIGTERM) unwinds like Ctrl-C: temporary files are removed, the checkpoint and how to resume
    are kept (without this handler Python dies at once and leaves a partial video behind)."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):  # pragma: no cover (not the main thread)
        pass


def _quiet_libraries() -> None:
    """diffusers/transformers print deprecation chatter on every load; users asked for one line per stage.
    (Imports both, and so torch: call it once a command is past its config checks.)"""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("diffusers", "transformers", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from diffusers.utils import logging as dlog
        from transformers.utils import logging as tlog

        dlog.set_verbosity_error()
        dlog.disable_progress_bar()
        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
        from huggingface_hub.utils import logging as hlog   # its download retries print a line each

        hlog.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
