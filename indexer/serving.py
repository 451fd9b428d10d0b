"""The read side of a vector store, for the app: load the current version, search it, and reload it
when an admin build switches another in, without a failed request.

`LiveIndex.reload_if_changed()` is the reload hook: it compares the store's stamp (CURRENT's inode
and modification time for faiss files, the alias target for Milvus), loads the new version
completely off to the side, then swaps one reference. A search that
started before the swap finishes on the version it began with; searches arriving during a load
use the old version instead of waiting; a version that fails to load is logged and skipped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from indexer.vector_store import SearchableVersion, VectorStore

log = logging.getLogger(__name__)

RETRY_SECONDS = 30.0  # a version that failed to load is tried again after this long, not on every request


class LiveIndex:
    """The current version of one named index, reloaded in place when the store switches another in."""

    def __init__(self, store: VectorStore, name: str, gpu: bool = False,
                 prepare: Callable[[SearchableVersion], object] | None = None):
        """`prepare` runs on each newly loaded version before it becomes visible (the app loads the
        version's encoder there, so the first query after a switch does not)."""
        self.store, self.name, self.gpu, self.prepare = store, name, gpu, prepare
        self._lock = threading.Lock()
        self._loaded: SearchableVersion | None = None
        self._stamp: object = None
        self._next_poll = 0.0
        self._retry_stamp = False
        self.reload_if_changed()

    @property
    def current(self) -> SearchableVersion:
        loaded = self._loaded
        if loaded is None:
            raise LookupError(f"index {self.name!r} has no version yet in {self.store.location}")
        return loaded

    def _prepare(self, loaded: SearchableVersion) -> None:
        if self.prepare is None:
            return
        try:
            self.prepare(loaded)
        except Exception as error:  # e.g. a missing encoder: queries report it; the index still loads
            log.error("index %s version %s: preparing failed (%s)", self.name, loaded.number, error)

    def reload_in_background(self) -> None:
        """If the current version changed, load it in a thread and return at once: queries keep the
        loaded version meanwhile instead of waiting for seconds of reads. A store whose stamp costs
        a round trip (Milvus) is asked at most every `poll_seconds`."""
        now = time.monotonic()
        if now < self._next_poll or self._lock.locked():
            return
        self._next_poll = now + self.store.poll_seconds
        if self._retry_stamp:
            self._stamp, self._retry_stamp = None, False
        if self.store.stamp(self.name) == self._stamp:
            return
        threading.Thread(target=self.reload_if_changed, name=f"reload-{self.name}", daemon=True).start()

    def reload_if_changed(self, wait: bool = False) -> bool:
        """Load the current version if it changed since the last load; True when it swapped.
        With `wait`, a reload already running is waited for (and then this one is checked), and a
        version that failed to load is tried again at once."""
        if wait and self._retry_stamp:
            self._stamp, self._retry_stamp = None, False
        stamp = self.store.stamp(self.name)
        if stamp == self._stamp and not (wait and self._lock.locked()):
            return False
        # One reload at a time; while it runs, other requests carry on with the loaded version
        # (only the very first load, with nothing to serve yet, makes them wait).
        if not self._lock.acquire(blocking=wait or self._loaded is None):
            return False
        try:
            stamp = self.store.stamp(self.name)
            if stamp == self._stamp:
                return False
            version = self.store.current(self.name)
            if version is not None and (self._loaded is None or version.number != self._loaded.number):
                loaded = self.store.open(version, self.gpu)
                self._prepare(loaded)
                self._loaded = loaded  # fully loaded (and prepared) before it is visible
            self._stamp = stamp
            return True
        except Exception as error:  # faiss raises RuntimeError, pymilvus MilvusException
            log.error("index %s: cannot load its current version (%s); still serving %s, trying again in %.0f s",
                      self.name, error, self._loaded.number if self._loaded else "nothing", RETRY_SECONDS)
            self._stamp = stamp  # not retried on every request...
            self._next_poll = time.monotonic() + RETRY_SECONDS
            self._retry_stamp = True  # ...but after RETRY_SECONDS (a Milvus timeout, a file system hiccup)
            if self._loaded is None:
                raise
            return False
        finally:
            self._lock.release()
