"""Shared fixtures: tiny galleries made in the test, never the network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _few_threads():
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def scenes(tmp_path_factory) -> Path:
    """A 60-scene synthetic gallery at 32 px (Karpathy JSON with train/val/test splits)."""
    from models.data import generate_scenes

    return generate_scenes(tmp_path_factory.mktemp("scenes"), 60, seed=3, image_size=32,
                           val_fraction=0.2, test_fraction=0.1)


def flickr8k_dir() -> Path:
    return SHARED_DATA / "flickr8k"


needs_flickr8k = pytest.mark.skipif(not (flickr8k_dir() / "captions.json").is_file(),
                                    reason="../shared/data/flickr8k is not present on this machine")
