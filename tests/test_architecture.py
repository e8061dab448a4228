"""The package's shape stays what docs/ARCHITECTURE.md says: layers that import only downwards, no import
cycles, no function-local imports hiding either, the runtime free of test helpers, files with one job."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "vidrt"
MAX_LINES = 400
LONG_FILE_REASON = "Why this file is long:"
# Modules allowed to import vidrt modules inside functions, and why: never to go up a layer or hide a cycle.
LAZY_IMPORTERS = {
    "vidrt/cli.py": "keeps `vidrt --help`, `vidrt models` and config errors free of torch and diffusers",
    "vidrt/engine/kernels/__init__.py": "the Triton kernels module imports triton, an optional dependency",
}


def _sources():
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_import_contracts_are_kept():
    """import-linter (contracts in pyproject.toml): layers, no cycles between siblings, no vidrt_dev."""
    done = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
                           "sys.exit(lint_imports(no_cache=True))"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "3 kept, 0 broken" in done.stdout


def _local_vidrt_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            found += [f"{path.relative_to(REPO)}:{node.lineno} {n}" for n in names if n.split(".")[0] == "vidrt"]
    return found


def test_no_function_local_imports_of_vidrt_modules():
    """A function-local import of the package's own modules is how cycles and upward arrows hide; only the CLI
    imports lazily (downwards), for start-up time. Heavy third-party imports may stay local."""
    offenders = [line for p in _sources() if str(p.relative_to(REPO)) not in LAZY_IMPORTERS
                 for line in _local_vidrt_imports(p)]
    assert not offenders, "\n".join(offenders)


def test_the_contract_can_fail(tmp_path):
    """The checks above catch what they claim to: an upward import breaks the layers contract."""
    import shutil

    copy = tmp_path / "repo"
    shutil.copytree(PACKAGE, copy / "vidrt", ignore=shutil.ignore_patterns("__pycache__", "known_configs"))
    shutil.copytree(REPO / "vidrt_dev", copy / "vidrt_dev", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    errors = copy / "vidrt" / "core" / "errors.py"
    errors.write_text(errors.read_text() + "\nfrom vidrt.run import render  # noqa: E402\n")
    done = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
                           "sys.exit(lint_imports(no_cache=True))"], cwd=copy, capture_output=True, text=True,
                          timeout=300, env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"})
    assert done.returncode != 0 and "BROKEN" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(REPO)))
def test_files_have_one_job(path):
    """Nothing over MAX_LINES lines without the reason stated in its module docstring."""
    text = path.read_text()
    if len(text.splitlines()) <= MAX_LINES:
        return
    doc = ast.get_docstring(ast.parse(text)) or ""
    assert LONG_FILE_REASON in doc, f"{path.relative_to(REPO)}: {len(text.splitlines())} lines and no reason"
