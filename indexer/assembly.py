"""A new version's contents, independent of any store: its vectors and id arrays (rows reused
from the previous version plus the newly encoded ones) and its manifest."""

from __future__ import annotations

import numpy as np

from indexer.calibration import fit_calibration
from indexer.catalogue import IndexVersion, utc_now
from indexer.pipeline import encode_texts
from models.encoders import Encoder


def assemble(previous: dict[str, np.ndarray] | None, encoder: Encoder, image_rows: dict[str, int], encoded, kept,
             captions, recaptioned: set[int], progress: bool) -> dict[str, np.ndarray]:
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


def describe_version(row: IndexVersion, encoder: Encoder, arrays: dict[str, np.ndarray]) -> dict:
    """The manifest of a version, before the store adds how it indexed the vectors."""
    calibration = fit_calibration(arrays["image_ids"], arrays["image_vectors"], arrays["caption_image_ids"],
                                  arrays["caption_vectors"])
    return {"name": row.index_name, "version": row.version, "encoder_name": encoder.name,
            "encoder_path": row.encoder_path, "checkpoint_hash": row.checkpoint_hash,
            "embed_dim": encoder.embed_dim, "metric": "inner_product", "gallery": row.gallery,
            "image_count": int(len(arrays["image_ids"])), "caption_count": int(len(arrays["caption_ids"])),
            "calibration": calibration.as_dict() if calibration else None, "built_at": utc_now().isoformat()}


def _rows_of(previous: dict[str, np.ndarray] | None, modality: str, ids: list[int], dim: int) -> np.ndarray:
    if previous is None or not ids:
        return np.zeros((0, dim), np.float32)
    position = {int(i): p for p, i in enumerate(previous[f"{modality}_ids"])}
    return np.asarray(previous[f"{modality}_vectors"][[position[i] for i in ids]])


def _previous_captions(previous: dict[str, np.ndarray] | None, image_ids: list[int]) -> list[tuple[int, int]]:
    """(caption id, image id) of the previous version's captions that belong to `image_ids`."""
    if previous is None or not image_ids:
        return []
    wanted = set(image_ids)
    return [(int(c), int(i)) for c, i in zip(previous["caption_ids"], previous["caption_image_ids"], strict=True)
            if int(i) in wanted]
