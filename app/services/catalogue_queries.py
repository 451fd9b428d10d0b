"""Reads of the catalogue the app needs (keyword-only, one session each)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

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


def _image_info(row: ImageRow) -> ImageInfo:
    return ImageInfo(row.id, row.path, row.file_path, row.content_hash, row.width, row.height,
                     tuple(c.text for c in row.captions))


def images_by_id(*, session: Session, image_ids: Sequence[int]) -> dict[int, ImageInfo]:
    """Images (with captions) by row id; ids no longer in the catalogue are simply absent."""
    if not image_ids:
        return {}
    rows = session.scalars(select(ImageRow).where(ImageRow.id.in_([int(i) for i in image_ids]))
                           .options(selectinload(ImageRow.captions))).all()
    return {row.id: _image_info(row) for row in rows}


def captions_by_id(*, session: Session, caption_ids: Sequence[int]) -> dict[int, CaptionInfo]:
    if not caption_ids:
        return {}
    rows = session.scalars(select(CaptionRow).where(CaptionRow.id.in_([int(i) for i in caption_ids]))).all()
    return {row.id: CaptionInfo(row.id, row.text, row.source, row.image_id) for row in rows}


def image_by_id(*, session: Session, image_id: int) -> ImageInfo | None:
    return images_by_id(session=session, image_ids=[image_id]).get(int(image_id))
