"""Commands answer at once when the config is wrong, and `vidrt models` always: they never import torch,
diffusers or transformers (checked in a fresh interpreter: the modules the commands pulled in, not a time)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

HEAVY = ("torch", "diffusers", "transformers")

# runs `vidrt ARGS` for each ARGS in turn in one interpreter; after each: its exit code, its stderr's first line,
# its stdout and the heavy modules imported so far
PROBE = textwrap.dedent("""
    import contextlib, io, json, sys
    from vidrt.cli import main
    for args in json.loads(sys.argv[1]):
        sys.argv = ["vidrt"] + args
        err, out = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                main()
                code = 0
            except SystemExit as exc:
                code = exc.code
        print(json.dumps({"code": code, "stderr": err.getvalue().strip().split("\\n")[0], "stdout": out.getvalue(),
                          "heavy": sorted(m for m in %r if m in sys.modules)}), file=sys.__stdout__, flush=True)
""" % (HEAVY,))


def probe(commands: list[list[str]], cwd) -> list[dict]:
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps([[str(a) for a in c] for c in commands])],
                          cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_models_and_bad_renders_never_import_torch(repo, tmp_path):
    (tmp_path / "bad.yaml").write_text("model: {family: wan, path: x}\nprompt: p\nheight: 32\nwidth: 32\nframes: 10\n")
    (tmp_path / "outdir.mp4").mkdir()
    wan, out = repo / "samples" / "wan-random.yaml", tmp_path / "x.mp4"
    cases = [
        (["models"], 0, "vidrt model families"),
        (["render", tmp_path / "bad.yaml", "-o", out], 2, "error: config: frames: 10 is not 4k+1"),
        (["render", wan, "-o", out, "--set", "guidance=.inf"], 2, "error: config: guidance"),
        (["render", wan, "-o", out, "--set", "seed=18446744073709551617"], 2, "error: config: seed"),
        (["render", wan, "-o", out, "--set", "steps.x=1"], 2, "single value"),
        (["render", wan, "-o", out, "--set", "memory.slicng=off"], 2, "did you mean 'memory.slicing'"),
        (["render", wan, "-o", out, "--set", "frames=400001", "--set", "height=720", "--set", "width=1280"], 2,
         "host memory"),
        (["render", wan, "-o", out, "--set", "image=samples/cond.png"], 2, "text-to-video"),
        (["render", repo / "samples" / "wan-i2v-random.yaml", "-o", out, "--set", "image=null"], 2, "image-to-video"),
        (["render", repo / "samples" / "animatediff-random.yaml", "-o", out, "--set",
          "model.motion_adapter=samples/none"], 2, "error: model.motion_adapter: samples/none is not a folder"),
        (["render", wan, "-o", out, "--set", "model.path=samples/none"], 2, "error: model.path"),
        (["render", wan, "-o", tmp_path / "outdir.mp4"], 2, "is a folder"),
        (["profile", tmp_path / "bad.yaml"], 2, "error: config: frames"),
        (["plan", tmp_path / "bad.yaml", "--budget", "8GiB"], 2, "error: config: frames"),
    ]
    results = probe([c for c, _, _ in cases], tmp_path)
    assert len(results) == len(cases)
    for (command, code, needle), result in zip(cases, results):
        # a success is checked on what it printed (stdout), a refusal on its one error line (stderr)
        assert result["code"] == code and needle in (result["stdout"] if code == 0 else result["stderr"]), \
            (command, result)
        assert result["heavy"] == [], (command, result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml", "outdir.mp4"]


def test_the_probe_can_fail(repo, tmp_path):
    """A command past its config checks does import them: the probe sees it."""
    (result,) = probe([["plan", repo / "samples" / "wan-random.yaml", "--budget", "lots"]], tmp_path)
    assert result["code"] == 2 and result["stderr"].startswith("error: budget: 'lots'"), result
    assert "torch" in result["heavy"] and "diffusers" in result["heavy"]
