"""Published figures are regenerated, never edited (issue 17).

Every bench/results/*.md is rendered by its script from the committed .json beside it: `--report-only`
re-renders it into a temporary folder without measuring anything, and the result must equal the committed file
byte for byte, so a hand edit (or a JSON changed without re-rendering) fails here. Every results .json names the
command that produced it, the git commit, the machine and the date. Every benchmark script answers `--help`.
"""
from __future__ import annotations

import difflib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
RESULTS = BENCH / "results"

# results file -> the command (after `python`) that renders it from its JSON
RENDERERS: dict[str, list[str]] = {
    "distributed.md": ["bench/distributed.py"],
    "fp8_quality.md": ["bench/fp8_quality.py"],
    "gpu_check.md": ["bench/gpu_check.py"],
    "gpu_long.md": ["bench/gpu_long.py"],
    "gpu_long_streamed.md": ["bench/gpu_long.py", "--vae-tiling", "off"],
    "gpu_pipeline.md": ["bench/gpu_pipeline.py"],
    "gpu_policies.md": ["bench/gpu_policies.py"],
    "gpu_profile.md": ["bench/gpu_profile.py"],
    "long_video.md": ["bench/long_video.py"],
    "memory.md": ["bench/memory.py"],
    "policies.md": ["bench/policies.py"],
    "profile.md": ["bench/profile_models.py"],
    "sample_quality.md": ["bench/sample_quality.py"],
    "time_model.md": ["bench/fit_time_model.py"],
}
# images the same --report-only call renders from the data, and whether their pixels must match the committed
# image (matplotlib's output varies with its version and fonts; the frame strip is the stored clips' pixels)
IMAGES = {"policies.md": [("policies.png", False)], "sample_quality.md": [("sample_strip.png", True)]}
# data files without a markdown of their own, and what reads them
DATA_ONLY = {"gpu_measurements.json": "bench/fit_time_model.py"}
META_KEYS = ("command", "commit", "machine", "date")


def render(md: str, out: Path, data: Path | None = None) -> subprocess.CompletedProcess:
    """`python <script> --report-only --out OUT [--json DATA]`; the JSON is also copied into OUT, for a script
    that reads its data from its output folder."""
    out.mkdir(parents=True, exist_ok=True)
    source = data or RESULTS / md.replace(".md", ".json")
    shutil.copy(source, out / source.name)
    cmd = [sys.executable, *RENDERERS[md], "--report-only", "--out", str(out)]
    if data is not None:
        cmd += ["--json", str(data)]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)


def same_as_committed(md: str, rendered: Path, committed: Path) -> tuple[bool, str]:
    new, old = rendered.read_bytes(), committed.read_bytes()
    if new == old:
        return True, ""
    diff = difflib.unified_diff(old.decode().splitlines(), new.decode().splitlines(), f"committed {md}",
                                f"rendered from {md[:-3]}.json", lineterm="", n=1)
    return False, "\n".join(list(diff)[:40])


def test_every_results_file_has_its_data_and_a_renderer():
    mds = {p.name for p in RESULTS.glob("*.md")}
    assert mds == set(RENDERERS), f"results files without a renderer: {mds - set(RENDERERS)}; " \
                                  f"renderers without a file: {set(RENDERERS) - mds}"
    for md in mds:
        assert (RESULTS / md).with_suffix(".json").is_file(), f"{md} has no {md[:-3]}.json beside it"
    for data in RESULTS.glob("*.json"):
        assert data.with_suffix(".md").is_file() or data.name in DATA_ONLY, \
            f"{data.name}: no .md renders it and it is not a known data-only file"
    for pngs in IMAGES.values():
        for png, _ in pngs:
            assert (RESULTS / png).is_file()


@pytest.mark.parametrize("md", sorted(RENDERERS))
def test_report_only_reproduces_the_committed_file(md, tmp_path):
    res = render(md, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    ok, diff = same_as_committed(md, tmp_path / md, RESULTS / md)
    assert ok, (f"bench/results/{md} is not what `python {' '.join(RENDERERS[md])} --report-only` renders from "
                f"{md[:-3]}.json (edited by hand, or the JSON changed without re-rendering):\n{diff}")
    for png, same_pixels in IMAGES.get(md, []):
        assert (tmp_path / png).stat().st_size > 0, f"{png} was not re-rendered"
        if same_pixels:
            import numpy as np
            from PIL import Image

            new, old = (np.asarray(Image.open(f)) for f in (tmp_path / png, RESULTS / png))
            assert new.shape == old.shape and (new == old).all(), f"{png} differs from its data"


@pytest.mark.parametrize("data", sorted(p.name for p in RESULTS.glob("*.json")))
def test_every_json_names_command_commit_machine_and_date(data):
    d = json.loads((RESULTS / data).read_text())
    for key in META_KEYS:
        assert d.get(key), f"{data}: no {key!r}"
    if isinstance(d["machine"], dict):
        assert d["machine"].get("gpu") or d["machine"].get("cpu") or d["machine"].get("platform") or \
            d["machine"].get("torch"), f"{data}: the machine names nothing"
    for run in d.get("runs", []):     # results of several runs: every run keeps its own metadata
        for key in ("command", "machine", "date"):
            assert run.get(key), f"{data}: a run without {key!r}"
        assert run.get("commit") or run.get("recorded_in"), f"{data}: a run with neither its commit nor the " \
                                                             "commit that recorded it"


def _numbers(obj) -> list[float]:
    if isinstance(obj, bool):
        return []
    if isinstance(obj, (int, float)):
        return [float(obj)]
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _numbers(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in _numbers(v)]
    return []


def test_gpu_measurements_agree_with_the_gpu_results():
    """bench/fit_time_model.py fits to gpu_measurements.json; every timed row there is a number of its source's
    JSON (the data the .md is rendered from)."""
    rows = json.loads((RESULTS / "gpu_measurements.json").read_text())["rows"]
    for r in rows:
        src = REPO / r["source"]["file"]
        nums = _numbers(json.loads(src.with_suffix(".json").read_text()))
        assert any(abs(x - r["seconds"]) < 1e-9 for x in nums), (r["id"], r["seconds"], src.name)


def test_a_hand_edit_is_caught(tmp_path):
    """Edit one number of a results file in a copy: the comparison above fails for it."""
    md = "long_video.md"
    copy = tmp_path / "results"
    shutil.copytree(RESULTS, copy)
    text = (copy / md).read_text()
    edited = re.sub(r"(\d+\.\d{3}) MiB", lambda m: f"{float(m[1]) * 0.9:.3f} MiB", text, count=1)
    assert edited != text
    (copy / md).write_text(edited)
    res = render(md, tmp_path / "out", copy / "long_video.json")
    assert res.returncode == 0, res.stderr[-2000:]
    ok, diff = same_as_committed(md, tmp_path / "out" / md, copy / md)
    assert not ok and "MiB" in diff
    ok, _ = same_as_committed(md, tmp_path / "out" / md, RESULTS / md)
    assert ok


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.py") if p.name != "results_io.py"))
def test_every_bench_script_answers_help(script):
    res = subprocess.run([sys.executable, f"bench/{script}", "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=120, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "usage:" in res.stdout


def test_a_gpu_run_is_stored_after_the_committed_runs(tmp_path, monkeypatch):
    """`--append` into another folder (a lent GPU's $OUT) keeps the committed runs and their notes, numbers the
    new run after them and takes its metadata; without it only the new run is kept."""
    import argparse

    monkeypatch.syspath_prepend(str(BENCH))
    import results_io as rio

    committed = json.loads((RESULTS / "gpu_policies.json").read_text())
    ap = argparse.ArgumentParser()
    rio.add_run_args(ap, "gpu_policies")
    data = rio.save_run(ap.parse_args(["--out", str(tmp_path), "--append"]), "gpu_policies", ["x"], rows=[1])
    assert data["runs"][:-1] == committed["runs"] and data.get("notes") == committed.get("notes")
    assert data["runs"][-1]["label"] == f"Run {len(committed['runs']) + 1}" and data["runs"][-1]["rows"] == [1]
    assert data["command"] == data["runs"][-1]["command"] != committed["command"]
    assert json.loads((tmp_path / "gpu_policies.json").read_text()) == data
    alone = rio.save_run(ap.parse_args(["--out", str(tmp_path / "b"), "--label", "L"]), "gpu_policies", ["x"],
                         " (note)", rows=[2])
    assert [r["label"] for r in alone["runs"]] == ["L"]
    numbered = rio.save_run(ap.parse_args(["--out", str(tmp_path / "c")]), "gpu_policies", ["x"], " (note)")
    assert [r["label"] for r in numbered["runs"]] == ["Run 1 (note)"]
