"""The README's newcomer path cannot rot: its Python example runs as printed (from another working directory,
with its sample paths made absolute) and renders the sample model's video; its set-up line installs torch's CPU
build at the version the project pins."""
from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

from vidrt.run.video import read_video


def readme(repo) -> str:
    return (repo / "README.md").read_text()


def python_block(repo) -> str:
    blocks = re.findall(r"^```python\n(.*?)^```", readme(repo), re.S | re.M)
    assert len(blocks) == 1, "the README has one Python example"
    return blocks[0]


@pytest.mark.slow
def test_readme_python_example_renders_the_sample_video(repo, tmp_path):
    code = python_block(repo)
    absolute = code.replace('"samples/', f'"{repo}/samples/')
    assert absolute.count(str(repo)) >= 2, "the example names the sample model and config"
    done = subprocess.run([sys.executable, "-c", absolute], cwd=tmp_path, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("(9, 32, 32, 3) ")              # the model's native 9 frames (was: 17 of 9)
    assert "'name': 'generate'" in lines[0]                     # stages recorded (was: an empty list)
    assert "'name': 'taylor_gate'" in lines[1] and "'steps_total': 25" in lines[1]   # stats after the run
    video = read_video(tmp_path / "out" / "x.mp4")
    assert video.shape == (9, 32, 32, 3)
    # "a red circle moves right on a blue background": a blue border, a red object left of centre at first
    # and right of it at the end
    border = np.concatenate([video[:, :3].reshape(-1, 3), video[:, -3:].reshape(-1, 3)]).astype(float)
    assert border[:, 2].mean() > 150 and border[:, 0].mean() < 100
    reds = [np.argwhere((f[..., 0].astype(int) - f[..., 2]) > 60)[:, 1].mean() for f in video[[0, -1]]]
    assert reds[0] < 16 < reds[1], reds


def test_readme_setup_installs_cpu_torch_at_the_pinned_version(repo):
    text = readme(repo)
    setup = re.search(r"^```bash\n# 1\. install.*?\n(.*?)\n", text, re.S | re.M).group(1)
    assert setup.startswith("pip install torch==2.13.0 --extra-index-url https://download.pytorch.org/whl/cpu && "
                            'pip install -e ".[test]" && vidrt render samples/tiny.yaml -o out/tiny.mp4')
    pin = re.search(r'"torch>=([\d.]+),<=([\d.]+)"', (repo / "pyproject.toml").read_text())
    as_tuple = lambda v: tuple(int(p) for p in v.split("."))  # noqa: E731
    assert as_tuple(pin.group(1)) <= (2, 13, 0) <= as_tuple(pin.group(2))
    assert "CUDA" in text[text.index("# 2. run the tests"):text.index("## Usage")]   # how to install for CUDA
