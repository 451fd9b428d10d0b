"""Wall time per stage of one query, so a slow search can be blamed on the right part."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class StageClock:
    """Accumulates milliseconds per stage: `encode` (query -> vector), `search` (faiss, and any
    re-ranking) and `metadata` (joining hits with the catalogue)."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - started) * 1000

    def rounded(self) -> dict[str, float]:
        return {name: round(value, 3) for name, value in self.ms.items()}
