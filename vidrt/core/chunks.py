"""Chunk ranges: the loop every sliced operator runs."""
from __future__ import annotations

from collections.abc import Iterator


def ranges(n: int, chunk: int) -> Iterator[tuple[int, int]]:
    """[start, stop) pairs covering [0, n) in chunks of `chunk` (at least 1)."""
    chunk = max(1, int(chunk))
    for s in range(0, n, chunk):
        yield s, min(n, s + chunk)
