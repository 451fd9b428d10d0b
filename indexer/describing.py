"""Generated captions for images that have none: which images need one, and the describe stage.

An image gets a caption from the encoder (GXN's caption decoder) when it has no human captions and
the catalogue holds no caption this encoder generated for it: newly encoded or changed images,
images whose captions were removed, images indexed before describing was on. An unchanged image
keeps its caption (and, through the previous version, its vector) from build to build; a model
that produced an empty caption for an image is not asked again until the image changes.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from indexer.catalogue import CaptionRow
from indexer.gallery import GalleryChanges, ScannedFile
from indexer.pipeline import DescribedImages, EncodedImages, describe_image_files
from models.data import SkipReport
from models.encoders import Encoder

NOTHING = DescribedImages({}, SkipReport(), 0.0)


def describes(encoder: Encoder, describe: bool | None) -> bool:
    """Whether a build generates captions: asked for (or not refused) and the encoder can."""
    return describe is not False and encoder.describes_images


def undescribed(sessions: sessionmaker[Session], changes: GalleryChanges, generated_by: str) -> list[ScannedFile]:
    """Unchanged images with neither human captions nor a caption encoder `generated_by` made."""
    candidates = [(scanned, known.row_id) for scanned, known in changes.unchanged if not scanned.record.captions]
    ids = [row_id for _, row_id in candidates]
    described: set[int] = set()
    with sessions() as session:
        for start in range(0, len(ids), 5000):
            described.update(session.scalars(select(CaptionRow.image_id).where(
                CaptionRow.image_id.in_(ids[start:start + 5000]), CaptionRow.source == "generated",
                CaptionRow.generated_by == generated_by)).all())
    return [scanned for scanned, row_id in candidates if row_id not in described]


def describe_for_build(sessions: sessionmaker[Session], encoder: Encoder, generated_by: str,
                       to_encode: list[ScannedFile], encoded: EncodedImages, changes: GalleryChanges, *,
                       batch_size: int, workers: int, progress: bool) -> DescribedImages:
    """Captions (by gallery path; possibly empty texts) for the images of this build that need one."""
    wanted = [to_encode[position] for position in encoded.kept if not to_encode[position].record.captions]
    wanted += [scanned for scanned, _ in changes.captions_changed if not scanned.record.captions]
    wanted += undescribed(sessions, changes, generated_by)
    if not wanted:
        return NOTHING
    described = describe_image_files(encoder, [s.record.path for s in wanted], batch_size, workers, progress)
    return DescribedImages({wanted[p].record.image_id: text.strip() for p, text in described.captions.items()},
                           described.report, described.seconds)
