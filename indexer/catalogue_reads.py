"""Reads of the catalogue the app serves from (keyword-only, one session each); the indexer's
builds write it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from indexer.catalogue import CaptionRow, ImageRow


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
    .outerjoin(CaptionRow, CaptionRow.image_id == ImageRow.id)
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
