"""Where data enters: turn a path into records, and records into decoded, trainable splits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from models.data.features import BackboneFeatures
from models.data.folder import load_image_folder
from models.data.images import SkipReport, cached_decode
from models.data.karpathy import find_karpathy_json, load_karpathy
from models.data.records import CaptionPairs, DatasetError, ImageRecord, select_split


def load_records(source: str | Path, captions_file: str | Path | None = None) -> list[ImageRecord]:
    """Records from a Karpathy JSON file, a folder holding one, or a plain folder of images."""
    source = Path(source)
    if source.is_file():
        if source.suffix.lower() != ".json":
            raise DatasetError(f"{source}: expected a Karpathy .json file or a folder of images")
        return load_karpathy(source)
    if not source.exists():
        raise DatasetError(f"{source}: dataset path not found")
    json_path = find_karpathy_json(source)
    if json_path is not None:
        return load_karpathy(json_path)
    return load_image_folder(source, captions_file)


@dataclass
class DecodedSplit:
    """One split with every usable image decoded once: pixels[i] belongs to pairs.records[i].
    For a frozen image backbone, `pixels` may hold its precomputed features instead."""

    pairs: CaptionPairs
    pixels: torch.Tensor | BackboneFeatures  # uint8, N x 3 x S x S
    report: SkipReport

    @property
    def records(self) -> list[ImageRecord]:
        return self.pairs.records

    def __len__(self) -> int:
        return len(self.pairs.records)


def decode_split(records: list[ImageRecord], split: str, size: int, cache_dir: Path | None = None,
                 require_captions: bool = True, workers: int = 2, progress: bool = True) -> DecodedSplit:
    """Decode the images of one split; bad images (and images without captions) are left out."""
    chosen = select_split(records, split)
    report = SkipReport()
    if require_captions:
        for record in chosen:
            if not record.captions:
                report.add(record.path, "no captions")
        chosen = [r for r in chosen if r.captions]
    pixels, kept, decode_report = cached_decode([r.path for r in chosen], size, cache_dir, workers, progress)
    report.skipped.extend(decode_report.skipped)
    kept_records = [chosen[i] for i in kept]
    return DecodedSplit(CaptionPairs.from_records(kept_records), pixels, report)
