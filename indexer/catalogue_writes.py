"""Writes to the catalogue during a build (SQL only): the images and captions a build adds,
changes or removes, the build's row in `index_versions` and its vector-position -> row entries.
The build module calls these inside its transactions; nothing here touches a vector store (the
previous version's id arrays come from the build, which read them through the store)."""

from __future__ import annotations

import numpy as np
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from indexer.catalogue import CaptionRow, ImageRow, IndexEntry, IndexVersion, utc_now
from indexer.gallery import GalleryChanges, ScannedFile


def register_build(sessions, name, gallery_key, encoder, encoder_path, checkpoint_hash,
                   on_disk: list[int]) -> IndexVersion:
    """A 'building' row with the next version number: past both the catalogue's and the disk's, so a
    fresh catalogue over an old INDEX_DIR never reuses (and overwrites) a version directory."""
    with sessions() as session, session.begin():
        latest = session.scalar(select(func.max(IndexVersion.version)).where(IndexVersion.index_name == name))
        number = max(latest or 0, max(on_disk, default=0)) + 1
        row = IndexVersion(index_name=name, version=number, status="building", gallery=gallery_key,
                           encoder_name=encoder.name, encoder_path=encoder_path, checkpoint_hash=checkpoint_hash,
                           embed_dim=encoder.embed_dim)
        session.add(row)
    return row


def mark_failed(sessions, row: IndexVersion, message: str) -> None:
    with sessions() as session, session.begin():
        session.execute(update(IndexVersion).where(IndexVersion.id == row.id,
                                                   IndexVersion.status == "building").values(
            status="failed", message=message[:2000], finished_at=utc_now()))


def delete_unshared_images(session: Session, name: str, image_ids: list[int]) -> None:
    """Delete the rows of images that left this index, unless another index's active version still
    serves them (several encoders may index one gallery)."""
    for start in range(0, len(image_ids), 5000):
        chunk = image_ids[start:start + 5000]
        shared = set(session.scalars(
            select(IndexEntry.image_id).join(IndexVersion, IndexEntry.version_id == IndexVersion.id)
            .where(IndexVersion.status == "active", IndexVersion.index_name != name, IndexEntry.image_id.in_(chunk))
            .distinct()).all())
        doomed = [i for i in chunk if i not in shared]
        if doomed:
            session.execute(delete(ImageRow).where(ImageRow.id.in_(doomed)))


def write_image_rows(session: Session, gallery_key: str, to_encode: list[ScannedFile], encoded,
                     changes: GalleryChanges) -> dict[str, int]:
    """Insert or update the rows of encoded images; returns gallery path -> row id for them."""
    known_rows = {s.record.image_id: k.row_id for s, k in changes.changed}
    known_rows.update(_existing_rows(session, gallery_key, [s.record.image_id for s in changes.new]))
    row_ids: dict[str, int] = {}
    for position, (width, height) in zip(encoded.kept, encoded.sizes, strict=True):
        scanned = to_encode[position]
        values = dict(file_path=str(scanned.record.path), content_hash=scanned.content_hash,
                      file_size=scanned.size, file_mtime_ns=scanned.mtime_ns, width=width, height=height,
                      split=scanned.record.split, updated_at=utc_now())
        row_id = known_rows.get(scanned.record.image_id)
        if row_id is None:
            row = ImageRow(gallery=gallery_key, path=scanned.record.image_id, **values)
            session.add(row)
            session.flush()
            row_id = row.id
        else:
            session.execute(update(ImageRow).where(ImageRow.id == row_id).values(**values))
        row_ids[scanned.record.image_id] = row_id
    for scanned, known in changes.unchanged + changes.captions_changed:  # a touched file: new stat, same bytes
        if (scanned.size, scanned.mtime_ns) != (known.size, known.mtime_ns):
            session.execute(update(ImageRow).where(ImageRow.id == known.row_id).values(
                file_size=scanned.size, file_mtime_ns=scanned.mtime_ns))
    return row_ids


def _existing_rows(session: Session, gallery_key: str, paths: list[str]) -> dict[str, int]:
    """Rows another index (same gallery, another encoder) already made for these paths."""
    found: dict[str, int] = {}
    for start in range(0, len(paths), 5000):
        found.update(session.execute(select(ImageRow.path, ImageRow.id).where(
            ImageRow.gallery == gallery_key, ImageRow.path.in_(paths[start:start + 5000]))).all())
    return found


def write_caption_rows(session: Session, to_encode: list[ScannedFile], image_rows: dict[str, int],
                       changes: GalleryChanges, previous: dict[str, np.ndarray] | None
                       ) -> tuple[list[tuple[int, int, str]], set[int]]:
    """Write the captions of encoded, re-captioned, or (by another index) re-written images; returns
    (caption id, image id, text) of the captions to encode, and the ids of those images."""
    targets = [(image_rows[s.record.image_id], tuple(s.record.captions)) for s in to_encode
               if s.record.image_id in image_rows]
    targets += [(known.row_id, tuple(scanned.record.captions)) for scanned, known in changes.captions_changed]
    targets += _captions_rewritten_elsewhere(session, previous, changes)
    written: list[tuple[int, int, str]] = []
    for image_id, texts in targets:
        current = session.execute(select(CaptionRow.id, CaptionRow.text).where(
            CaptionRow.image_id == image_id, CaptionRow.source == "human").order_by(CaptionRow.position)).all()
        if tuple(text for _, text in current) == texts:  # identical rows (e.g. made by another index): keep them
            written += [(caption_id, image_id, text) for caption_id, text in current]
            continue
        session.execute(delete(CaptionRow).where(CaptionRow.image_id == image_id, CaptionRow.source == "human"))
        for position, text in enumerate(texts):
            row = CaptionRow(image_id=image_id, position=position, text=text, source="human")
            session.add(row)
            session.flush()
            written.append((row.id, image_id, text))
    return written, {image_id for image_id, _ in targets}


def write_generated_captions(session: Session, captions: dict[int, str], generated_by: str
                             ) -> list[tuple[int, int, str]]:
    """The caption encoder `generated_by` wrote for each image (image id -> text); returns
    (caption id, image id, text). A row that already says the same (another index with this
    encoder made it) is kept, not replaced, so that index's entries stay valid; other encoders'
    captions are left alone."""
    image_ids = list(captions)
    existing: dict[int, tuple[int, str]] = {}
    for start in range(0, len(image_ids), 5000):
        existing.update({image_id: (caption_id, text) for caption_id, image_id, text in session.execute(
            select(CaptionRow.id, CaptionRow.image_id, CaptionRow.text).where(
                CaptionRow.image_id.in_(image_ids[start:start + 5000]), CaptionRow.source == "generated",
                CaptionRow.generated_by == generated_by))})
    kept = [(existing[i][0], i, text) for i, text in captions.items() if i in existing and existing[i][1] == text]
    replaced = {i for i in captions if i in existing and existing[i][1] != captions[i]}
    for start in range(0, len(replaced), 5000):
        session.execute(delete(CaptionRow).where(CaptionRow.image_id.in_(sorted(replaced)[start:start + 5000]),
                                                 CaptionRow.source == "generated",
                                                 CaptionRow.generated_by == generated_by))
    rows = [CaptionRow(image_id=i, position=0, text=text, source="generated", generated_by=generated_by)
            for i, text in captions.items() if i not in existing or i in replaced]
    session.add_all(rows)
    session.flush()
    return kept + [(row.id, row.image_id, row.text) for row in rows]


def _captions_rewritten_elsewhere(session: Session, previous: dict[str, np.ndarray] | None,
                                  changes: GalleryChanges) -> list[tuple[int, tuple]]:
    """Reused images whose previous caption rows are gone: another index over the same gallery
    replaced them. Their captions are taken (and encoded) afresh."""
    if previous is None:
        return []
    caption_ids = [int(c) for c in previous["caption_ids"]]
    alive: set[int] = set()
    for start in range(0, len(caption_ids), 5000):
        alive.update(session.scalars(select(CaptionRow.id).where(
            CaptionRow.id.in_(caption_ids[start:start + 5000]))).all())
    stale_images = {int(i) for c, i in zip(caption_ids, previous["caption_image_ids"], strict=True) if c not in alive}
    return [(known.row_id, tuple(scanned.record.captions)) for scanned, known in changes.unchanged
            if known.row_id in stale_images]


def record_entries(session: Session, row: IndexVersion, arrays: dict[str, np.ndarray]) -> None:
    """The vector position -> catalogue row mapping of this version, in bulk."""
    entries = [{"version_id": row.id, "modality": "image", "faiss_id": i, "image_id": int(image_id),
                "caption_id": None} for i, image_id in enumerate(arrays["image_ids"])]
    entries += [{"version_id": row.id, "modality": "caption", "faiss_id": i, "image_id": int(image_id),
                 "caption_id": int(caption_id)}
                for i, (caption_id, image_id) in enumerate(zip(arrays["caption_ids"], arrays["caption_image_ids"],
                                                               strict=True))]
    for start in range(0, len(entries), 10_000):
        session.execute(insert(IndexEntry), entries[start:start + 10_000])


def activate(session: Session, row: IndexVersion, manifest: dict, image_count: int, caption_count: int,
             **counts: int) -> None:
    """Mark the build's version active and the previous active one superseded (the caller commits)."""
    session.execute(update(IndexVersion).where(IndexVersion.index_name == row.index_name,
                                               IndexVersion.status == "active").values(status="superseded"))
    session.execute(update(IndexVersion).where(IndexVersion.id == row.id).values(
        status="active", image_count=image_count, caption_count=caption_count, directory=manifest["location"],
        image_index_type=manifest["image_index"]["factory"], caption_index_type=manifest["caption_index"]["factory"],
        finished_at=utc_now(), build_seconds=manifest["index_seconds"], **counts))


def fail_interrupted_builds(sessions: sessionmaker[Session], name: str) -> int | None:
    """Mark builds of `name` still 'building' (their process is gone: the caller holds the build
    lock) as failed; return the version number the catalogue says is active."""
    with sessions() as session, session.begin():
        session.execute(update(IndexVersion).where(IndexVersion.index_name == name,
                                                   IndexVersion.status == "building")
                        .values(status="failed", message="interrupted", finished_at=utc_now()))
        return session.scalar(select(IndexVersion.version).where(IndexVersion.index_name == name,
                                                                 IndexVersion.status == "active"))
