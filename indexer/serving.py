"""The read side of the store, for the app: load the current version, search it, and reload it
when an admin build switches CURRENT, without a failed request.

`LiveIndex.reload_if_changed()` is the reload hook: it compares CURRENT's inode and modification
time, loads the new version completely off to the side, then swaps one reference. A search that
started before the swap finishes on the version it began with; searches arriving during a load
use the old version instead of waiting; a version that fails to load is logged and skipped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import faiss
import numpy as np

from indexer import faiss_index, store
from indexer.calibration import Calibration

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedVersion:
    stored: store.StoredVersion
    manifest: dict
    images: faiss.Index
    captions: faiss.Index
    image_ids: np.ndarray          # faiss row -> image row id
    caption_ids: np.ndarray        # faiss row -> caption row id
    caption_image_ids: np.ndarray  # faiss row -> image row id of the caption

    @classmethod
    def load(cls, stored: store.StoredVersion, gpu: bool = False) -> LoadedVersion:
        manifest = stored.manifest
        indexes = {}
        for modality in ("image", "caption"):
            index = faiss_index.read_index(str(stored.directory / f"{modality}s.faiss"), gpu=gpu)
            value = manifest[f"{modality}_index"].get("search_value")
            if value:
                faiss_index.set_search_param(index, int(value))
            indexes[modality] = index
        loaded = cls(stored, manifest, indexes["image"], indexes["caption"], stored.ids("image"),
                     stored.ids("caption"), stored.ids("caption_image"))
        # Built now, not by the first image-id query: the id map of 1M images takes about a second,
        # and the vector file is opened while its version directory surely exists.
        _ = loaded._image_positions, loaded._image_vectors
        return loaded

    @cached_property
    def calibration(self) -> Calibration | None:
        """Maps this version's scores to relevance (None for a gallery without captions)."""
        return Calibration.from_manifest(self.manifest)

    @cached_property
    def _image_positions(self) -> dict[int, int]:
        return {int(image_id): position for position, image_id in enumerate(self.image_ids)}

    @cached_property
    def _image_vectors(self) -> np.ndarray:
        return np.load(self.stored.directory / "image_vectors.npy", mmap_mode="r")

    def image_vector(self, image_id: int) -> np.ndarray | None:
        """The stored (normalised) vector of an indexed image, or None if this version lacks it."""
        position = self._image_positions.get(int(image_id))
        return None if position is None else np.array(self._image_vectors[position])

    def image_vectors(self, image_ids: np.ndarray) -> np.ndarray:
        positions = [self._image_positions[int(i)] for i in image_ids]
        return np.asarray(self._image_vectors[positions])

    def search(self, modality: str, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, catalogue row ids) of the top k per query; -1 ids pad short result lists."""
        index, ids = (self.images, self.image_ids) if modality == "image" else (self.captions, self.caption_ids)
        k = max(0, min(k, index.ntotal))
        if k == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        scores, rows = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return scores, np.where(rows >= 0, ids[np.clip(rows, 0, None)], -1)


class LiveIndex:
    """The current version of one named index, reloaded in place when CURRENT changes."""

    def __init__(self, index_dir: Path, name: str, gpu: bool = False,
                 prepare: Callable[[LoadedVersion], object] | None = None):
        """`prepare` runs on each newly loaded version before it becomes visible (the app loads the
        version's encoder there, so the first query after a switch does not)."""
        self.index_dir, self.name, self.gpu, self.prepare = Path(index_dir), name, gpu, prepare
        self._lock = threading.Lock()
        self._loaded: LoadedVersion | None = None
        self._pointer_stamp: tuple[int, int] | None = None
        self.reload_if_changed()

    @property
    def current(self) -> LoadedVersion:
        loaded = self._loaded
        if loaded is None:
            raise LookupError(f"index {self.name!r} has no version yet in {self.index_dir}")
        return loaded

    def _prepare(self, loaded: LoadedVersion) -> None:
        if self.prepare is None:
            return
        try:
            self.prepare(loaded)
        except Exception as error:  # e.g. a missing encoder: queries report it; the index still loads
            log.error("index %s version %s: preparing failed (%s)", self.name, loaded.stored.number, error)

    def reload_in_background(self) -> None:
        """If CURRENT changed, load the new version in a thread and return at once: queries keep
        the loaded version meanwhile instead of waiting for seconds of disk reads."""
        if store.pointer_stamp(self.index_dir, self.name) == self._pointer_stamp or self._lock.locked():
            return
        threading.Thread(target=self.reload_if_changed, name=f"reload-{self.name}", daemon=True).start()

    def reload_if_changed(self, wait: bool = False) -> bool:
        """Load the version CURRENT names if it changed since the last load; True when it swapped.
        With `wait`, a reload already running is waited for (and then this one is checked)."""
        stamp = store.pointer_stamp(self.index_dir, self.name)
        if stamp == self._pointer_stamp and not (wait and self._lock.locked()):
            return False
        # One reload at a time; while it runs, other requests carry on with the loaded version
        # (only the very first load, with nothing to serve yet, makes them wait).
        if not self._lock.acquire(blocking=wait or self._loaded is None):
            return False
        try:
            stamp = store.pointer_stamp(self.index_dir, self.name)
            if stamp == self._pointer_stamp:
                return False
            self._pointer_stamp = stamp  # a version that fails to load is not retried on every request
            stored = store.current_version(self.index_dir, self.name)
            if stored is not None and (self._loaded is None or stored.number != self._loaded.stored.number):
                loaded = LoadedVersion.load(stored, self.gpu)
                self._prepare(loaded)
                self._loaded = loaded  # fully loaded (and prepared) before it is visible
            return True
        except (OSError, RuntimeError, KeyError, ValueError) as error:  # faiss raises RuntimeError
            log.error("index %s: cannot load the version CURRENT names (%s); still serving %s", self.name, error,
                      self._loaded.stored.number if self._loaded else "nothing")
            if self._loaded is None:
                raise
            return False
        finally:
            self._lock.release()
