"""Reads of the catalogue: the rows the app serves from (keyword-only, one session each), and the
images a build compares a gallery against. Builds write it through `catalogue_writes`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from indexer.catalogue import CaptionRow, ImageRow
from indexer.gallery import KnownImage


@dataclass(frozen=True)
class ImageInfo:
    id: int
    path: str
    file_path: str
    content_hash: str
    width: int
    height: int
    captions: tuple[str, ...]


@dataclass(frozen=True)
class CaptionInfo:
    id: int
    text: str
    source: str
    image_id: int


# Built once: these run on every search, and building a statement costs more than running it.
_IMAGES_WITH_CAPTIONS = (
    select(ImageRow.id, ImageRow.path, ImageRow.file_path, ImageRow.content_hash, ImageRow.width,
           ImageRow.height, CaptionRow.text)
    .outerjoin(CaptionRow, (CaptionRow.image_id == ImageRow.id) & (CaptionRow.source == "human"))
    .where(ImageRow.id.in_(bindparam("ids", expanding=True)))
    .order_by(ImageRow.id, CaptionRow.position, CaptionRow.id))
_CAPTIONS = (select(CaptionRow.id, CaptionRow.text, CaptionRow.source, CaptionRow.image_id)
             .where(CaptionRow.id.in_(bindparam("ids", expanding=True))))


def images_by_id(*, session: Session, image_ids: Sequence[int]) -> dict[int, ImageInfo]:
    """Images (with captions) by row id; ids no longer in the catalogue are simply absent. One
    join read as plain rows, not ORM objects (which cost more than the SQL here)."""
    if not image_ids:
        return {}
    images: dict[int, tuple] = {}
    captions: dict[int, list[str]] = {}
    for *image, text in session.execute(_IMAGES_WITH_CAPTIONS, {"ids": [int(i) for i in image_ids]}):
        images.setdefault(image[0], tuple(image))
        if text is not None:
            captions.setdefault(image[0], []).append(text)
    return {i: ImageInfo(*image, captions=tuple(captions.get(i, ()))) for i, image in images.items()}


def captions_by_id(*, session: Session, caption_ids: Sequence[int]) -> dict[int, CaptionInfo]:
    if not caption_ids:
        return {}
    rows = session.execute(_CAPTIONS, {"ids": [int(i) for i in caption_ids]})
    return {row.id: CaptionInfo(*row) for row in rows}


def image_by_id(*, session: Session, image_id: int) -> ImageInfo | None:
    return images_by_id(session=session, image_ids=[image_id]).get(int(image_id))


def known_images(sessions: sessionmaker[Session], image_ids: np.ndarray | None) -> dict[str, KnownImage]:
    """The images the current version holds (`image_ids`), as the catalogue remembers them (keyed
    by gallery path)."""
    if image_ids is None:
        return {}
    ids = [int(i) for i in image_ids]
    known: dict[str, KnownImage] = {}
    with sessions() as session:
        for start in range(0, len(ids), 5000):
            rows = session.scalars(select(ImageRow).where(ImageRow.id.in_(ids[start:start + 5000]))
                                   .options(selectinload(ImageRow.captions))).all()
            for row in rows:
                captions = tuple(c.text for c in row.captions if c.source == "human")
                known[row.path] = KnownImage(row.id, row.file_size, row.file_mtime_ns, row.content_hash, captions)
    return known
