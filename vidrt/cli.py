"""`vidrt` command line: render, models, profile, plan.

Every user error is one line on stderr ("error: <key>: <problem>") and exit code 2, with no traceback
and no output file left behind.
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
err = Console(stderr=True)
out = Console()

SetOption = Annotated[Optional[list[str]], typer.Option("--set", help="override a config key: a.b=value")]
ConfigArg = Annotated[Path, typer.Argument(help="YAML config file", show_default=False)]


@app.callback()
def _setup() -> None:
    """Runs before every command (also when the app is invoked in-process)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _quiet_libraries()


def user_errors(fn):
    """Turn VidrtError (and Ctrl-C) into one line on stderr and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except VidrtError as exc:
            err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
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
    from vidrt.config import load_config
    from vidrt.run.render import render as run

    overrides = list(set_ or []) + ([f"devices=[{devices}]"] if devices else [])
    cfg = load_config(config, overrides)
    from vidrt.engine.distributed.launch import relaunch_if_needed

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
    set_: SetOption = None,
):
    """Peak memory per stage and per module (real run, or --dry-run simulation)."""
    from vidrt.config import load_config
    from vidrt.run.commands import profile_command

    profile_command(load_config(config, set_ or []), dry_run=dry_run, json_path=json_path, plot_path=plot,
                    gpus=gpus)


@app.command()
@user_errors
def plan(
    config: ConfigArg,
    budget: Annotated[str, typer.Option("--budget", help="accelerator memory budget, e.g. 8GiB")],
    gpus: Annotated[int, typer.Option("--gpus", min=1, help="plan per GPU for a torchrun over this many GPUs "
                                                            "(weights replicated or sharded)")] = 1,
    set_: SetOption = None,
):
    """The fastest plan (chunk sizes, offload, text-encoder placement, VAE tiling) that fits BUDGET."""
    from vidrt.config import load_config
    from vidrt.run.commands import plan_command

    plan_command(load_config(config, set_ or []), budget, gpus=gpus)


def main() -> None:
    app(prog_name="vidrt")


def _quiet_libraries() -> None:
    """diffusers/transformers print deprecation chatter on every load; users asked for one line per stage."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("diffusers", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from diffusers.utils import logging as dlog
        from transformers.utils import logging as tlog

        dlog.set_verbosity_error()
        dlog.disable_progress_bar()
        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
