"""Small files parsed once per version: several steps of one render read the same file (a single-file denoiser's
header, a sample's vidrt.json); a parse is cached on the file's resolved path, size and mtime, so a file rewritten
in place is parsed again."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")


def parsed_once(parse: Callable[[Path], T], maxsize: int = 8) -> Callable[[Path], T]:
    """`parse(path)`, cached per version of the file (a failed parse is not cached; `stat` errors pass through).
    Callers that hand the result on must not let it be changed in place (copy it)."""
    @lru_cache(maxsize=maxsize)
    def cached(path: Path, size: int, mtime_ns: int) -> T:
        return parse(path)

    def read(path: Path) -> T:
        stat = path.stat()
        return cached(path.resolve(), stat.st_size, stat.st_mtime_ns)

    return read
