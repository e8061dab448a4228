"""Checks before `from_pretrained`: is the path a pipeline folder of this family, or a hub id, and are its
weights safe to load."""
from __future__ import annotations

import json
import re
from pathlib import Path

from vidrt.core.errors import VidrtError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def looks_like_hub_id(path: str) -> bool:
    """`org/name` with no local folder `org/` — anything else that does not exist is a missing folder."""
    parts = path.split("/")
    return (len(parts) == 2 and all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", p) for p in parts)
            and not Path(parts[0]).exists())


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def read_index(folder: Path) -> dict:
    """model_index.json of a pipeline folder (one clear error when the folder is not one)."""
    index = folder / "model_index.json"
    if not folder.is_dir():
        raise VidrtError(f"model.path: {folder} is not a folder")
    if not index.is_file():
        raise VidrtError(f"model.path: {folder} has no model_index.json (not a diffusers pipeline folder)")
    try:
        return json.loads(index.read_text())
    except json.JSONDecodeError as exc:
        raise VidrtError(f"model.path: {index} is not valid JSON ({exc.msg})") from None


def refuse_pickle_only(folder: Path) -> None:
    """Pickle weights run code when loaded: refuse a component folder that has nothing else."""
    for sub in folder.iterdir():
        if not sub.is_dir():
            continue
        pickles = [p for p in sub.iterdir() if p.suffix in PICKLE_SUFFIXES]
        tensors = [p for p in sub.iterdir() if p.suffix == ".safetensors"]
        if pickles and not tensors:
            raise VidrtError(
                f"model.allow_pickle: {sub} has only pickle weights ({pickles[0].name}); "
                "convert to safetensors or set model.allow_pickle: true if you trust the file"
            )
