"""The batched encode pipeline: reader (worker processes decode files) -> encoder -> vectors; and
the describe stage, which reads the same way and writes a generated caption per image.

Decoding runs in DataLoader workers so it overlaps encoding; unreadable files come back as
errors and are reported, never raised.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from models.data import SkipReport
from models.data.images import BadImageError, load_for_encoding
from models.encoders import Encoder
from models.encoders.base import encode_in_batches


class _ImageFiles(Dataset):
    def __init__(self, paths: Sequence[Path], size: int):
        self.paths, self.size = list(paths), size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            pixels, (width, height) = load_for_encoding(self.paths[index], self.size)
            return index, torch.from_numpy(pixels), width, height, None
        except BadImageError as error:
            return index, None, 0, 0, str(error)


def _collate(items):
    return items  # keep per-item errors; stacking happens after bad items are dropped


def _decoded_batches(paths: Sequence[Path], size: int, batch_size: int, workers: int, report: SkipReport,
                     bar: tqdm) -> Iterator[list[tuple]]:
    """Batches of (position, uint8 pixels, width, height) decoded in worker processes; a file that
    cannot be decoded goes to `report` instead. The bar advances by every file read."""
    loader = DataLoader(_ImageFiles(paths, size), batch_size=batch_size, num_workers=workers,
                        collate_fn=_collate, persistent_workers=False)
    for batch in loader:
        for index, _, _, _, error in batch:
            if error is not None:
                report.add(paths[index], error)
        good = [item[:4] for item in batch if item[4] is None]
        if good:
            yield good
        bar.update(len(batch))


@dataclass
class EncodedImages:
    vectors: np.ndarray          # (n_ok, D) float32, L2-normalised
    kept: list[int]              # positions in the input list that were encoded
    sizes: list[tuple[int, int]]  # original (width, height) of each kept image
    report: SkipReport
    seconds: float

    @property
    def images_per_second(self) -> float:
        return len(self.kept) / self.seconds if self.seconds else 0.0


def encode_image_files(encoder: Encoder, paths: Sequence[Path], batch_size: int = 64, workers: int = 2,
                       progress: bool = True) -> EncodedImages:
    """Encode image files in batches; bad files are skipped and listed in the report."""
    started = time.perf_counter()
    report, kept, sizes, parts = SkipReport(), [], [], []
    bar = tqdm(total=len(paths), desc="encode images", unit="img", disable=not progress)
    encoder.eval()
    for good in _decoded_batches(paths, encoder.image_size, batch_size, workers, report, bar):
        parts.append(encoder.encode_image(torch.stack([item[1] for item in good])).cpu().numpy())
        kept += [item[0] for item in good]
        sizes += [(item[2], item[3]) for item in good]
        bar.set_postfix(img_s=f"{len(kept) / max(time.perf_counter() - started, 1e-9):.0f}", skipped=len(report))
    bar.close()
    vectors = np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, encoder.embed_dim), np.float32)
    return EncodedImages(vectors, kept, sizes, report, time.perf_counter() - started)


@dataclass
class DescribedImages:
    captions: dict[int, str]     # position in the input list -> generated caption
    report: SkipReport
    seconds: float

    @property
    def images_per_second(self) -> float:
        return len(self.captions) / self.seconds if self.seconds else 0.0


def describe_image_files(encoder: Encoder, paths: Sequence[Path], batch_size: int = 32, workers: int = 2,
                         progress: bool = True) -> DescribedImages:
    """A generated caption for each image file (the encoder's caption decoder, its default beam);
    bad files are skipped and listed in the report."""
    started = time.perf_counter()
    report, captions = SkipReport(), {}
    bar = tqdm(total=len(paths), desc="describe images", unit="img", disable=not progress)
    encoder.eval()
    for good in _decoded_batches(paths, encoder.image_size, batch_size, workers, report, bar):
        texts = encoder.describe(torch.stack([item[1] for item in good]))
        captions.update({item[0]: text for item, text in zip(good, texts, strict=True)})
        bar.set_postfix(img_s=f"{len(captions) / max(time.perf_counter() - started, 1e-9):.1f}")
    bar.close()
    return DescribedImages(captions, report, time.perf_counter() - started)


def encode_texts(encoder: Encoder, texts: Sequence[str], batch_size: int = 256, progress: bool = True) -> np.ndarray:
    """L2-normalised float32 vectors of `texts`, in batches."""
    encoder.eval()
    return encode_in_batches(encoder.encode_text, texts, encoder.embed_dim, batch_size, "encode captions",
                             progress).numpy()
