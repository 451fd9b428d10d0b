"""A new version's vectors and id arrays: rows reused from the previous version's files plus the
newly encoded ones (no SQL, no faiss)."""

from __future__ import annotations

import numpy as np

from indexer.pipeline import encode_texts
from models.encoders import Encoder


def assemble(previous, encoder: Encoder, image_rows: dict[str, int], encoded, kept, captions,
             recaptioned: set[int], progress: bool) -> dict[str, np.ndarray]:
    """The new version's vectors and id arrays: reused rows from the previous version plus new ones."""
    dim = encoder.embed_dim
    image_ids = [k.row_id for _, k in kept]
    image_vectors = [_rows_of(previous, "image", image_ids, dim)]
    new_image_ids = [image_rows[path] for path in image_rows]
    image_vectors.append(encoded.vectors)
    reused_captions = _previous_captions(previous, [i for i in image_ids if i not in recaptioned])
    caption_ids = [c for c, _ in reused_captions] + [c for c, _, _ in captions]
    caption_owner = [i for _, i in reused_captions] + [i for _, i, _ in captions]
    caption_vectors = [_rows_of(previous, "caption", [c for c, _ in reused_captions], dim),
                       encode_texts(encoder, [t for _, _, t in captions], progress=progress)]
    return {"image_ids": np.asarray(image_ids + new_image_ids, dtype=np.int64),
            "image_vectors": np.concatenate(image_vectors).astype(np.float32),
            "caption_ids": np.asarray(caption_ids, dtype=np.int64),
            "caption_image_ids": np.asarray(caption_owner, dtype=np.int64),
            "caption_vectors": np.concatenate(caption_vectors).astype(np.float32)}


def _rows_of(previous, modality: str, ids: list[int], dim: int) -> np.ndarray:
    if previous is None or not ids:
        return np.zeros((0, dim), np.float32)
    stored_ids = previous.ids(modality)
    position = {int(i): p for p, i in enumerate(stored_ids)}
    return previous.vectors(modality)[[position[i] for i in ids]]


def _previous_captions(previous, image_ids: list[int]) -> list[tuple[int, int]]:
    """(caption id, image id) of the previous version's captions that belong to `image_ids`."""
    if previous is None or not image_ids:
        return []
    wanted = set(image_ids)
    owners = previous.ids("caption_image")
    return [(int(c), int(i)) for c, i in zip(previous.ids("caption"), owners, strict=True) if int(i) in wanted]
