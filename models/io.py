"""Writing files so that a crash never leaves a half-written one under the real name."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """torch.save to a temporary name beside `path`, then rename over it (atomic on one file system)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    torch.save(obj, temporary)
    temporary.replace(path)
    return path


def digest_weights(digest: Any, module: nn.Module) -> Any:
    """Feed a module's state (names and values) into a hashlib digest: a cache key that changes
    whenever the weights do. Returns the digest."""
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """The SHA-256 of a file's bytes, read a megabyte at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
