"""A version's files (faiss and numpy only, no SQL): the two faiss indexes, sized and tuned, the id
and vector arrays, the relevance calibration and the manifest, written into a staging directory
that the store then publishes."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from indexer import faiss_index, store
from indexer.calibration import fit_calibration
from indexer.catalogue import IndexVersion, utc_now
from models.encoders import Encoder

if TYPE_CHECKING:
    from indexer.build import BuildOptions


def write_version_files(directory: Path, arrays: dict[str, np.ndarray], row: IndexVersion, encoder: Encoder,
                        options: BuildOptions) -> dict:
    started = time.perf_counter()
    gpu = faiss_index.gpu_available() and options.device != "cpu-only"
    described = {}
    for modality in ("image", "caption"):
        vectors = arrays[f"{modality}_vectors"]
        choice = faiss_index.choose_index(len(vectors), encoder.embed_dim, options.memory_budget,
                                          options.index_type, gpu)
        index = faiss_index.build_index(vectors, choice, gpu)
        value, recall = faiss_index.tune_search_param(index, vectors, options.recall_target)
        faiss_index.write_index(index, str(directory / f"{modality}s.faiss"))
        described[modality] = {"kind": choice.kind, "factory": choice.factory + (",RFlat" if choice.refine else ""),
                               "search_param": faiss_index.search_param_name(index), "search_value": value,
                               "recall": recall, "count": int(len(vectors))}
    for key, array in arrays.items():
        np.save(directory / f"{key}.npy", array)
    calibration = fit_calibration(arrays["image_ids"], arrays["image_vectors"], arrays["caption_image_ids"],
                                  arrays["caption_vectors"])
    manifest = {"name": row.index_name, "version": row.version, "encoder_name": encoder.name,
                "encoder_path": row.encoder_path, "checkpoint_hash": row.checkpoint_hash,
                "embed_dim": encoder.embed_dim, "metric": "inner_product", "gallery": row.gallery,
                "image_index": described["image"], "caption_index": described["caption"],
                "image_count": int(len(arrays["image_ids"])), "caption_count": int(len(arrays["caption_ids"])),
                "calibration": calibration.as_dict() if calibration else None,
                "built_at": utc_now().isoformat(), "build_seconds": time.perf_counter() - started, "gpu": gpu}
    (directory / "encoder.sha256").write_text(row.checkpoint_hash + "\n")
    (directory / store.MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest
