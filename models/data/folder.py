"""A plain folder of images, the shape users' own galleries come in.

Captions are optional and come from, in order of preference: a `captions.csv`
(`filename,caption` with a header, several rows per image allowed), a `captions.jsonl`
(`{"filename": ..., "caption": ...}` per line), or a sidecar `NAME.txt` beside `NAME.jpg`
(one caption per non-empty line).
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import defaultdict
from pathlib import Path

from models.data.records import DatasetError, ImageRecord

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def list_image_files(folder: Path) -> list[Path]:
    """Every file under `folder` with an image suffix, sorted so ids are stable."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def stable_split(image_id: str, val_fraction: float = 0.05, test_fraction: float = 0.05) -> str:
    """A split from a hash of the id: the same image always lands in the same split, and adding
    images never moves old ones (so a folder can be trained and evaluated on)."""
    bucket = int(hashlib.sha1(image_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "val" if bucket < val_fraction else "test" if bucket < val_fraction + test_fraction else "train"


def load_image_folder(folder: str | Path, captions_file: str | Path | None = None,
                      split: str | None = None) -> list[ImageRecord]:
    """Records for every image under `folder`; the id is the path relative to the folder.

    Splits come from `stable_split` (about 90/5/5) unless `split` puts every image in one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: image folder not found")
    table = _read_caption_table(folder, Path(captions_file) if captions_file else None)
    records = []
    for path in list_image_files(folder):
        relative = path.relative_to(folder).as_posix()
        captions = table.get(relative) or table.get(path.name) or _read_sidecar(path)
        records.append(ImageRecord(relative, path, tuple(captions), split or stable_split(relative)))
    return records


def _read_caption_table(folder: Path, explicit: Path | None) -> dict[str, list[str]]:
    if explicit is not None:
        if not explicit.is_file():
            raise DatasetError(f"{explicit}: captions file not found")
        return _parse_table(explicit)
    for name in ("captions.csv", "captions.jsonl"):
        if (folder / name).is_file():
            return _parse_table(folder / name)
    return {}


def _parse_table(path: Path) -> dict[str, list[str]]:
    table: dict[str, list[str]] = defaultdict(list)
    rows = _csv_rows(path) if path.suffix.lower() == ".csv" else _jsonl_rows(path)
    for filename, caption in rows:
        if caption.strip():
            table[filename.strip()].append(caption.strip())
    return dict(table)


def _csv_rows(path: Path) -> list[tuple[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or not {"filename", "caption"} <= set(reader.fieldnames):
                raise DatasetError(f"{path}: CSV needs a header with 'filename' and 'caption' columns")
            rows = []
            for line, row in enumerate(reader, start=2):
                if row["filename"] is None or row["caption"] is None:
                    raise DatasetError(f"{path}: line {line} has fewer than two columns")
                rows.append((row["filename"], row["caption"]))
            return rows
    except UnicodeDecodeError as error:
        raise DatasetError(f"{path}: not UTF-8 text ({error})") from error


def _jsonl_rows(path: Path) -> list[tuple[str, str]]:
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise DatasetError(f"{path}: not UTF-8 text ({error})") from error
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DatasetError(f"{path}: line {number} is not valid JSON ({error.msg})") from error
        if not isinstance(row, dict) or not isinstance(row.get("filename"), str) \
                or not isinstance(row.get("caption"), str):
            raise DatasetError(f"{path}: line {number} needs string 'filename' and 'caption' fields")
        rows.append((row["filename"], row["caption"]))
    return rows


def _read_sidecar(image_path: Path) -> list[str]:
    sidecar = image_path.with_suffix(".txt")
    if not sidecar.is_file():
        return []
    text = sidecar.read_text(encoding="utf-8", errors="replace")
    return [line.strip() for line in text.splitlines() if line.strip()]
