"""Results files of the benchmarks: every bench/results/<name>.md is rendered by its script from <name>.json
beside it, and never edited by hand.

A benchmark run writes the JSON (its data plus this module's `metadata()`: the command, the git commit, the
machine, the date) and renders the markdown from it; `--report-only` re-renders the markdown (and any plot)
from the committed JSON without recomputing anything, into `--out DIR` (default bench/results).
tests/test_results.py re-renders every file into a temporary folder and compares it byte for byte.

GPU benchmarks (bench/gpu_*.py) keep every measuring run in the JSON's "runs", each with its own metadata; on a
lent GPU machine run e.g. `python bench/gpu_check.py --out $OUT --append` (the new run follows the committed
ones), copy $OUT's .json and .md into bench/results and commit both. Their earlier runs were transcribed from
hand-written tables (issue 17): those runs say which commit recorded them.

This module imports nothing heavy (no torch), so `--report-only` stays fast.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
GiB = 2 ** 30
MiB = 2 ** 20
META_KEYS = ("command", "commit", "machine", "date")
RUN_NOTES = "Notes recorded with these figures"


# ------------------------------------------------------------------------------------------- metadata
def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def git_dirty(paths: tuple[str, ...] = ("vidrt", "vidrt_dev", "bench", "samples")) -> bool | None:
    """Whether the code a benchmark runs had uncommitted changes (None: not a git checkout). Results files are not
    code: a bench run right after another bench wrote its results is clean."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--", *paths, ":(exclude)bench/results"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return bool(out.strip())


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """Platform, CPU, GPU (None without CUDA), python and torch versions (torch: only if it is imported)."""
    info: dict[str, Any] = {"platform": platform.platform(), "cpu": cpu_name(), "cpus": os.cpu_count(),
                            "gpu": None, "python": platform.python_version(), "torch": None}
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
    return info


def command(argv: list[str] | None = None) -> str:
    """The command line that ran the script, relative to the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script_text = str(script.relative_to(ROOT))
    except ValueError:
        script_text = str(script)
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python", script_text, *args])


def metadata(argv: list[str] | None = None) -> dict[str, Any]:
    return {"command": command(argv), "commit": git_commit(), "dirty": git_dirty(), "machine": machine(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def describe_machine(m: Any) -> str:
    if isinstance(m, str):
        return m
    parts = [m.get("gpu") or "", m.get("platform") or "", m.get("cpu") or "",
             f"{m['cpus']} CPUs" if m.get("cpus") else "",
             f"python {m['python']}" if m.get("python") else "", f"torch {m['torch']}" if m.get("torch") else ""]
    return "; ".join(p for p in parts if p)


def describe_run(meta: dict[str, Any]) -> str:
    """`command` at commit abc123456789 (uncommitted changes), date, on machine."""
    commit = meta.get("commit") or "unknown"
    commit = commit[:12] if len(commit) == 40 else commit
    dirty = " (with uncommitted changes)" if meta.get("dirty") else ""
    return f"`{meta['command']}` at commit {commit}{dirty}, {meta['date']}, on {describe_machine(meta['machine'])}"


def provenance(script: str, name: str, meta: dict[str, Any], extra: str = "") -> str:
    """The line under each results file's title: where it comes from and how to regenerate it."""
    run = meta.get("provenance") or f"Data: {describe_run(meta)}."
    return (f"Rendered from [{name}.json]({name}.json) by `python {script} --report-only{extra}`; never edit "
            f"this file by hand. {run}")


# ------------------------------------------------------------------------------------------- files
def add_output_args(ap: argparse.ArgumentParser, name: str) -> None:
    ap.add_argument("--report-only", action="store_true",
                    help=f"re-render the results from the committed {name}.json without measuring anything")
    ap.add_argument("--out", type=Path, default=RESULTS,
                    help="folder for the .md (and .json / .png of a run); default bench/results (on a lent GPU "
                         "machine: $OUT)")
    ap.add_argument("--json", type=Path, default=None,
                    help=f"with --report-only: the data to render (default bench/results/{name}.json)")


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def write_json(path: Path, data: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


def write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"wrote {path}")


def source_json(args: argparse.Namespace, name: str) -> Path:
    return Path(args.json) if args.json else RESULTS / f"{name}.json"


def committed(name: str) -> dict[str, Any] | None:
    """Another benchmark's committed data (for cross references), or None."""
    path = RESULTS / f"{name}.json"
    return read_json(path) if path.is_file() else None


# ------------------------------------------------------------------------------------------- GPU runs
def check_cuda(script: str) -> None:
    """GPU benchmarks measure on a CUDA device; without one only --report-only works."""
    import torch

    if not torch.cuda.is_available():
        sys.exit(f"error: {script} measures on a CUDA device and none is available here "
                 "(--report-only re-renders the committed results; --help lists the options)")


def new_run(label: str, argv: list[str] | None = None) -> dict[str, Any]:
    """One measuring run of a GPU benchmark: its label and metadata (call after the run: the machine then
    names the GPU and the torch version)."""
    return {"label": label, **metadata(argv)}


def add_run_args(ap: argparse.ArgumentParser, name: str) -> None:
    """The options of a GPU benchmark whose data file keeps a list of runs: the output options, `--append` and
    `--label`."""
    ap.add_argument("--append", action="store_true", help="add this run to the runs already in the JSON")
    ap.add_argument("--label", default=None, help="the run's heading (default: run N)")
    add_output_args(ap, name)


def _earlier(path: Path) -> Path:
    """Where the runs before this one are: `path` itself, or (when it is in another folder such as a lent GPU's
    $OUT) the committed bench/results file of the same name."""
    return Path(path) if Path(path).is_file() else RESULTS / Path(path).name


def save_run(args: argparse.Namespace, name: str, argv: list[str] | None, label_note: str = "",
             **fields: Any) -> dict[str, Any]:
    """Store one measuring run (its label and metadata, then `fields`) in `args.out/name.json` as `store_run` does
    and return the data file; unlabelled runs are numbered after the runs kept with `--append`."""
    store = Path(args.out) / f"{name}.json"
    earlier = _earlier(store)
    n = len(read_json(earlier).get("runs", [])) + 1 if args.append and earlier.is_file() else 1
    run = new_run(args.label or f"Run {n}{label_note}", argv)
    run.update(fields)
    return store_run(store, run, args.append)


def store_run(path: Path, run: dict[str, Any], append: bool) -> dict[str, Any]:
    """The data file after `run`: only this run, or (`append`) the runs already in `path` (or, when `path` is in
    another folder such as a lent GPU's $OUT, in the committed bench/results file) followed by it. The top-level
    metadata is the newest run's."""
    earlier = _earlier(path)
    old = read_json(earlier) if append and earlier.is_file() else {}
    data = {k: run[k] for k in ("command", "commit", "dirty", "machine", "date")}
    data["runs"] = [*old.get("runs", []), run]
    if old.get("notes"):          # notes about the earlier runs stay with them
        data["notes"] = old["notes"]
    write_json(path, data)
    return data


def run_heading(run: dict[str, Any]) -> list[str]:
    """A run's section heading (label, GPU, torch) and a line with its command, date and commit."""
    m = run.get("machine") or {}
    where = f"{m.get('gpu') or 'no GPU'}" + (f" (torch {m['torch']})" if m.get("torch") else "")
    details = f"Command `{run['command']}`, {run['date']}"
    if run.get("commit"):
        details += f", code at commit {run['commit'][:12]}" + (" with uncommitted changes" if run.get("dirty") else "")
    elif run.get("recorded_in"):
        details += (f"; figures recorded in commit {run['recorded_in'][:12]} ({run.get('recorded_at', '')}; the "
                    "run's own commit and time were not recorded)")
    if run.get("session"):
        details += f"; {run['session']}"
    return [f"## {run['label']}: {where}", "", details + ".", ""]


def notes_block(notes: list[str], title: str = "Notes") -> list[str]:
    return [f"{title}:", "", *[f"- {n}" for n in notes], ""] if notes else []
