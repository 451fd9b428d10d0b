"""The one in-memory shape every dataset format is read into.

Karpathy JSON, plain image folders and the synthetic scenes all become a list of
`ImageRecord`s, so training, evaluation and indexing never care where data came from.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SPLITS = ("train", "val", "test")


class DatasetError(ValueError):
    """A dataset file or folder is missing or malformed; the message names it."""


@dataclass(frozen=True)
class ImageRecord:
    """One gallery image and the captions written for it."""

    image_id: str
    path: Path
    captions: tuple[str, ...] = ()
    split: str = "train"
    attributes: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass
class CaptionPairs:
    """A split flattened for retrieval: images, captions and which image each caption belongs to."""

    records: list[ImageRecord]
    captions: list[str]
    caption_to_image: list[int]

    @classmethod
    def from_records(cls, records: Sequence[ImageRecord]) -> CaptionPairs:
        captions: list[str] = []
        owners: list[int] = []
        for index, record in enumerate(records):
            captions.extend(record.captions)
            owners.extend([index] * len(record.captions))
        return cls(list(records), captions, owners)


def select_split(records: Iterable[ImageRecord], split: str) -> list[ImageRecord]:
    """Records of one split; an unknown split name is an error, an empty split is allowed."""
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    return [record for record in records if record.split == split]
