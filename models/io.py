"""Writing files so that a crash never leaves a half-written one under the real name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """torch.save to a temporary name beside `path`, then rename over it (atomic on one file system)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    torch.save(obj, temporary)
    temporary.replace(path)
    return path
