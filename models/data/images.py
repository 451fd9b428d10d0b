"""The one image loader: open, check, decode and cache images, skipping bad files with a report.

Decoding a JPEG costs 2-3 ms per image per core, more than a small CNN's forward pass, so a
training set is decoded once into a uint8 tensor (N x 3 x S x S) and cached on disk.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from models.io import atomic_torch_save

MAX_IMAGE_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold
CACHE_FORMAT = 1


class BadImageError(ValueError):
    """An image file that cannot be used; the message says why."""


@dataclass
class SkipReport:
    """Files skipped while loading, with the reason for each."""

    skipped: list[tuple[str, str]] = field(default_factory=list)

    def add(self, path: Path | str, reason: str) -> None:
        self.skipped.append((str(path), reason))

    def __len__(self) -> int:
        return len(self.skipped)

    def summary(self, limit: int = 10) -> str:
        if not self.skipped:
            return "no files skipped"
        lines = [f"skipped {len(self.skipped)} file(s):"]
        lines += [f"  {path}: {reason}" for path, reason in self.skipped[:limit]]
        if len(self.skipped) > limit:
            lines.append(f"  ... and {len(self.skipped) - limit} more")
        return "\n".join(lines)


def open_image(source: str | Path | BinaryIO, max_pixels: int = MAX_IMAGE_PIXELS, draft_size: int | None = None
               ) -> Image.Image:
    """Open and fully decode an image (a path or a binary file object) as RGB, or raise
    BadImageError naming the problem."""
    if isinstance(source, (str, Path)):
        source = Path(source)
        if not source.is_file():
            raise BadImageError("file not found")
        if source.stat().st_size == 0:
            raise BadImageError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(source)
            if image.width * image.height > max_pixels:
                raise BadImageError(f"too large ({image.width}x{image.height} pixels, "
                                    f"limit {max_pixels})")
            original_size = image.size
            if draft_size and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))  # JPEG decodes at reduced scale: faster
            rgb = image.convert("RGB")
            rgb.info["original_size"] = original_size
            return rgb
    except BadImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise BadImageError(f"too large: a decompression bomb ({error})") from error
    except UnidentifiedImageError as error:
        raise BadImageError(f"not a readable image ({type(error).__name__})") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise BadImageError(f"corrupt or truncated image ({error})") from error


def load_for_encoding(path: str | Path, size: int, max_pixels: int = MAX_IMAGE_PIXELS
                      ) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode an image straight to 3 x size x size uint8; also returns its original (width, height)."""
    image = open_image(path, max_pixels, draft_size=size)
    return image_to_uint8(image, size), image.info["original_size"]


def image_to_uint8(image: Image.Image, size: int) -> np.ndarray:
    """Resize to size x size, squashing the aspect ratio (as the papers' fixed-size inputs do; nothing is
    cropped away, so every object stays in view), as 3 x S x S uint8."""
    resized = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1).copy()


def _decode_one(args: tuple[str, int]) -> np.ndarray | str:
    path, size = args
    try:
        return load_for_encoding(path, size)[0]
    except BadImageError as error:
        return str(error)


def decode_images(paths: Sequence[Path], size: int, workers: int = 2, progress: bool = True
                  ) -> tuple[torch.Tensor, list[int], SkipReport]:
    """Decode `paths` to an (n_ok, 3, size, size) uint8 tensor; returns it, the indices kept, skips."""
    report = SkipReport()
    arrays: list[np.ndarray] = []
    kept: list[int] = []
    jobs = [(str(p), size) for p in paths]
    bar = tqdm(total=len(jobs), desc=f"decode {size}px", unit="img", disable=not progress)
    if workers > 1 and len(jobs) > 64:
        with ProcessPoolExecutor(workers) as pool:
            results = pool.map(_decode_one, jobs, chunksize=32)
            _collect(results, paths, arrays, kept, report, bar)
    else:
        _collect(map(_decode_one, jobs), paths, arrays, kept, report, bar)
    bar.close()
    if not arrays:
        return torch.empty(0, 3, size, size, dtype=torch.uint8), kept, report
    return torch.from_numpy(np.stack(arrays)), kept, report


def _collect(results, paths, arrays, kept, report, bar) -> None:
    for index, result in enumerate(results):
        if isinstance(result, str):
            report.add(paths[index], result)
        else:
            arrays.append(result)
            kept.append(index)
        bar.update()


def cached_decode(paths: Sequence[Path], size: int, cache_dir: Path | None, workers: int = 2,
                  progress: bool = True) -> tuple[torch.Tensor, list[int], SkipReport]:
    """`decode_images`, memoised on disk by (paths, sizes, modification times, size)."""
    if cache_dir is None:
        return decode_images(paths, size, workers, progress)
    cache_file = Path(cache_dir) / f"decoded-{files_fingerprint(paths, size)}.pt"
    if cache_file.is_file():
        cached = torch.load(cache_file, weights_only=True)
        report = SkipReport([tuple(item) for item in cached["skipped"]])
        return cached["pixels"], list(cached["kept"]), report
    pixels, kept, report = decode_images(paths, size, workers, progress)
    atomic_torch_save({"pixels": pixels, "kept": kept, "skipped": [list(s) for s in report.skipped]}, cache_file)
    return pixels, kept, report


def files_fingerprint(paths: Sequence[Path], size: int) -> str:
    """A short digest of the files (paths, sizes, modification times) and the decode size: a cache key."""
    digest = hashlib.sha256(f"{CACHE_FORMAT}:{size}".encode())
    for path in paths:
        path = Path(path).resolve()  # one file, one key, however the dataset was named
        stat = path.stat() if path.exists() else None
        digest.update(f"{path}:{stat.st_size if stat else -1}:{stat.st_mtime_ns if stat else -1}\n".encode())
    return digest.hexdigest()[:20]
