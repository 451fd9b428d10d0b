"""Gallery scanning and change detection against the catalogue.

A file is unchanged when its size and modification time match the catalogue; otherwise its
SHA-256 decides (a touched but identical file is not re-encoded). Captions are compared as text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from models.data import ImageRecord, SkipReport
from models.io import file_sha256


@dataclass
class ScannedFile:
    record: ImageRecord
    size: int
    mtime_ns: int
    content_hash: str


@dataclass
class KnownImage:
    """What the catalogue remembers of an indexed image."""

    row_id: int
    size: int
    mtime_ns: int
    content_hash: str
    captions: tuple[str, ...]


@dataclass
class GalleryChanges:
    new: list[ScannedFile] = field(default_factory=list)
    changed: list[tuple[ScannedFile, KnownImage]] = field(default_factory=list)
    captions_changed: list[tuple[ScannedFile, KnownImage]] = field(default_factory=list)
    unchanged: list[tuple[ScannedFile, KnownImage]] = field(default_factory=list)
    removed: list[tuple[str, KnownImage]] = field(default_factory=list)
    missing: SkipReport = field(default_factory=SkipReport)

    @property
    def nothing_to_do(self) -> bool:
        return not (self.new or self.changed or self.captions_changed or self.removed)

    def summary(self) -> str:
        return (f"{len(self.new)} new, {len(self.changed)} changed, {len(self.captions_changed)} with new captions, "
                f"{len(self.unchanged)} unchanged, {len(self.removed)} removed")


def scan_changes(records: list[ImageRecord], known: dict[str, KnownImage], full: bool = False) -> GalleryChanges:
    """Sort the gallery's records into new / changed / unchanged, and find removed images.

    With `full`, every present file counts as changed (so it is encoded again)."""
    changes = GalleryChanges()
    seen: set[str] = set()
    for record in records:
        path = Path(record.path)
        if record.image_id in seen:
            changes.missing.add(path, f"duplicate image id {record.image_id!r}")
            continue
        try:
            stat = path.stat()
        except OSError as error:  # listed but gone: skipped, and dropped from the index if it was there
            changes.missing.add(path, f"cannot read file ({error.strerror or error})")
            continue
        seen.add(record.image_id)
        previous = known.get(record.image_id)
        if previous is not None and not full and (stat.st_size, stat.st_mtime_ns) == (previous.size,
                                                                                        previous.mtime_ns):
            content_hash = previous.content_hash
        else:
            try:
                content_hash = file_sha256(path)
            except OSError as error:  # unreadable (permissions) or gone since the stat
                seen.discard(record.image_id)
                changes.missing.add(path, f"cannot read file ({error.strerror or error})")
                continue
        _classify(changes, ScannedFile(record, stat.st_size, stat.st_mtime_ns, content_hash), previous, full)
    changes.removed = [(image_id, k) for image_id, k in known.items() if image_id not in seen]
    return changes


def _classify(changes: GalleryChanges, scanned: ScannedFile, previous: KnownImage | None, full: bool) -> None:
    if previous is None:
        changes.new.append(scanned)
    elif full or scanned.content_hash != previous.content_hash:
        changes.changed.append((scanned, previous))
    elif tuple(scanned.record.captions) != previous.captions:
        changes.captions_changed.append((scanned, previous))
    else:
        changes.unchanged.append((scanned, previous))
