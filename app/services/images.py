"""Uploaded images (validated, never written to disk) and cached thumbnails."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

from PIL import Image

from app.services.errors import BadQuery, NotFound, PayloadTooLarge, UnsupportedMedia
from models.data.images import BadImageError, open_image

THUMBNAIL_SIDE = 256


def decode_upload(data: bytes, max_bytes: int) -> Image.Image:
    """The uploaded bytes as an RGB image, or a service error naming what is wrong with them."""
    if not data:
        raise BadQuery("the uploaded file is empty (0 bytes)")
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"the upload is {len(data):,} bytes; the limit is {max_bytes:,}")
    try:
        return open_image(io.BytesIO(data))
    except BadImageError as error:
        reason = str(error)
        if reason.startswith("too large"):
            raise PayloadTooLarge(f"the uploaded image is {reason}") from error
        if reason.startswith("not a readable image"):
            raise UnsupportedMedia("the upload is not an image Pillow can read (JPEG, PNG, WebP, ...)") from error
        raise BadQuery(f"the uploaded image is {reason}") from error


def open_gallery_image(image_id: int, file_path: str) -> Image.Image:
    """A catalogued image's file, or NotFound when it can no longer be read (moved, deleted, broken)."""
    try:
        return open_image(file_path)
    except BadImageError as error:
        raise NotFound(f"image {image_id} can no longer be read ({error})") from error


class ThumbnailCache:
    """JPEG thumbnails on disk, named by image id and content hash (a changed file gets a new one)."""

    def __init__(self, folder: Path, side: int = THUMBNAIL_SIDE):
        self.folder, self.side = Path(folder), side

    def path_for(self, image_id: int, content_hash: str, source: str) -> Path:
        target = self.folder / f"{int(image_id)}-{content_hash[:16]}.jpg"
        if target.is_file():
            return target
        image = open_gallery_image(image_id, source)
        image.thumbnail((self.side, self.side))
        self.folder.mkdir(parents=True, exist_ok=True)
        # A private temporary name per request: concurrent first requests never share a half-written file.
        handle, temporary = tempfile.mkstemp(suffix=".tmp", dir=self.folder)
        with os.fdopen(handle, "wb") as stream:
            image.save(stream, "JPEG", quality=85)
        os.replace(temporary, target)
        return target
