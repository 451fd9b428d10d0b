"""The seam between imgsearch and whatever holds its vectors: `VectorStore` (versions of one named
index: stage, switch, list, remove) and `SearchableVersion` (one version, loaded to serve: search,
vectors by id). Two implementations: `FaissFileStore` (faiss indexes in versioned directories, the
default) and `MilvusStore` (a Milvus server, or milvus-lite's local file); `open_vector_store`
picks one from a URL. Nothing outside the implementations imports faiss or pymilvus.

A version is published in two steps, so that the SQL catalogue can commit in between: `stage`
makes it complete but not current, `switch` makes it current atomically. Searches that started on
the previous version finish on it; a staged version that is never switched is removed with
`discard` (or, after a crash, by `remove_abandoned`).
"""

from __future__ import annotations

import fcntl
import re
from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np

from indexer.calibration import Calibration
from indexer.codes import CodeSpec
from indexer.recall_tuning import exact_search

MODALITIES = ("image", "caption")
# What a version holds: per modality the catalogue row ids and their vectors (row i of the vectors
# belongs to id i), and for each caption the image it describes.
ARRAY_KEYS = ("image_ids", "image_vectors", "caption_ids", "caption_image_ids", "caption_vectors")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$")


class VectorStoreError(RuntimeError):
    """The store cannot do what was asked for a reason outside the code: unreachable, locked, not
    installed. Shown to users as one line."""


def other_modality(modality: str) -> str:
    """The modality a cross-modal query into `modality`'s index comes from."""
    return "caption" if modality == "image" else "image"


def check_index_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise ValueError(f"index name {name!r}: use up to 100 letters, digits, '-' or '_' (not first)")
    return name


@dataclass(frozen=True)
class IndexSettings:
    """How a store sizes its indexes (the same rule for every store: see faiss_index.choose_index)."""

    index_type: str = "auto"            # auto | flat | hnsw | ivfpq
    memory_budget: int | None = None    # bytes; None = no limit
    recall_target: float = 0.95         # the search parameter is tuned until recall@10 reaches this
    gpu: bool = False
    codes: CodeSpec | None = None       # compact codes instead of float vectors (indexer.codes)
    progress: bool = True               # progress bars for what a build trains (code models)


@dataclass(frozen=True)
class Version:
    """A complete version of index `name` and its manifest (what built it, how it is indexed)."""

    name: str
    number: int
    manifest: dict


class SearchableVersion(ABC):
    """One version, loaded to answer queries; its methods are safe to call from several threads."""

    def __init__(self, version: Version):
        self.version = version

    @property
    def number(self) -> int:
        return self.version.number

    @property
    def manifest(self) -> dict:
        return self.version.manifest

    @cached_property
    def calibration(self) -> Calibration | None:
        """Maps this version's scores to relevance (None for a gallery without captions)."""
        return Calibration.from_manifest(self.manifest)

    def search(self, modality: str, queries: np.ndarray, k: int, among: np.ndarray | None = None,
               query_modality: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, catalogue row ids), each (queries x k'), best first, of the top k per query;
        k' = min(k, size) and -1 ids pad short lists. `among` restricts the hits to those row ids,
        searched exactly from their stored vectors (the cost is the subset's size, and a store's
        filtered graph search cannot miss a small subset). `query_modality` says whether the
        queries are images or texts ('image' or 'caption'; default: the other modality), which
        binary codes need: each modality has its own hashing function."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if among is not None:
            ids, vectors = self.vectors_of(modality, sorted({int(i) for i in among}))
            if k <= 0 or len(ids) == 0:
                return no_hits(len(queries))
            scores, found = exact_search(vectors, queries, k)
            return scores, ids[found]
        k = max(0, min(k, self.manifest[f"{modality}_index"]["count"]))
        if k == 0 or len(queries) == 0:
            return no_hits(len(queries))
        return self._search_index(modality, queries, k, query_modality or other_modality(modality))

    @abstractmethod
    def _search_index(self, modality: str, queries: np.ndarray, k: int, query_modality: str
                      ) -> tuple[np.ndarray, np.ndarray]:
        """`search` through the version's index, for 1 <= k <= its size and float32 queries."""

    @abstractmethod
    def vectors_of(self, modality: str, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of those of `ids` this version holds, in the order asked."""

    def image_vectors(self, image_ids: np.ndarray) -> np.ndarray:
        """The stored (normalised) vectors of these images, in order; KeyError names a missing one."""
        wanted = [int(i) for i in image_ids]
        ids, vectors = self.vectors_of("image", wanted)
        if len(ids) < len(wanted):
            held = set(ids.tolist())
            raise KeyError(f"image {next(i for i in wanted if i not in held)} is not in version {self.number}")
        return vectors

    def image_vector(self, image_id: int) -> np.ndarray | None:
        """One image's stored vector, or None if this version lacks it."""
        try:
            return self.image_vectors(np.asarray([image_id]))[0]
        except KeyError:
            return None


def no_hits(queries: int) -> tuple[np.ndarray, np.ndarray]:
    """An empty answer for each of `queries` queries."""
    return np.zeros((queries, 0), np.float32), np.zeros((queries, 0), np.int64)


class VectorStore(ABC):
    """Versions of named indexes. `stamp` is polled by servers at most every `poll_seconds`."""

    kind: str
    poll_seconds: float = 0.0

    def __init__(self, lock_dir: Path):
        self.lock_dir = Path(lock_dir)

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the vectors live, for messages."""

    @abstractmethod
    def index_names(self) -> list[str]:
        """Names of the indexes that have a current version."""

    @abstractmethod
    def current(self, name: str) -> Version | None:
        """The version being served, or None before the first switch."""

    @abstractmethod
    def stamp(self, name: str) -> Hashable | None:
        """A cheap value that changes on every switch (servers compare it before reloading)."""

    @abstractmethod
    def versions(self, name: str) -> list[int]:
        """Complete versions present (current, staged or kept), oldest first."""

    @abstractmethod
    def stage(self, name: str, number: int, arrays: dict[str, np.ndarray], manifest: dict,
              settings: IndexSettings) -> dict:
        """Store version `number` complete but not current; returns `manifest` plus what the store
        adds: `image_index` and `caption_index` (the index kind, its search parameter and recall),
        `store`, `location` (where the version lives) and `index_seconds`."""

    @abstractmethod
    def switch(self, name: str, number: int) -> None:
        """Make a staged version current, atomically for every reader."""

    @abstractmethod
    def discard(self, name: str, number: int) -> None:
        """Remove a version that is not current (a staged one the catalogue never accepted, an old one)."""

    @abstractmethod
    def remove_abandoned(self, name: str) -> list[str]:
        """Remove what builds killed mid-way left behind; only call it holding `build_lock`."""

    @abstractmethod
    def read_arrays(self, version: Version, keys: tuple[str, ...] = ARRAY_KEYS) -> dict[str, np.ndarray]:
        """A version's ids and vectors (those of ARRAY_KEYS asked for), for an incremental build."""

    @abstractmethod
    def open(self, version: Version, gpu: bool = False) -> SearchableVersion:
        """Load a version to serve queries."""

    def remove_old_versions(self, name: str, keep: int = 2) -> list[int]:
        """Remove all but the newest `keep` versions up to the current one (never the current one,
        never a newer one); returns those removed."""
        if keep < 1:
            raise ValueError(f"keep must be at least 1 (the current version), not {keep}")
        current = self.current(name)
        if current is None:
            return []
        older = [v for v in self.versions(name) if v <= current.number]
        doomed = [v for v in older[:-keep] if v != current.number]
        for number in doomed:
            self.discard(name, number)
        return doomed

    def stats(self, name: str) -> dict:
        """What a status page shows: the current version, its counts and indexes, the versions kept."""
        current = self.current(name)
        manifest = current.manifest if current else {}
        return {"store": self.kind, "location": self.location, "current": current.number if current else None,
                "versions": self.versions(name),
                **{key: manifest.get(key) for key in ("image_count", "caption_count", "image_index",
                                                      "caption_index")}}

    @contextmanager
    def build_lock(self, name: str) -> Iterator[None]:
        """One build per index name at a time (a second fails at once instead of corrupting). The
        lock is a local file: builds of one index must run on one machine."""
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        with open(self.lock_dir / f".{check_index_name(name)}.build.lock", "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as error:
                raise VectorStoreError(f"another build of index {name!r} is running") from error
            yield


def open_vector_store(url: str | None, index_dir: Path) -> VectorStore:
    """The store a URL names: empty or `faiss` -> faiss files under `index_dir`; `milvus-lite:PATH`
    or a path ending in `.db` -> an embedded milvus-lite file; `http(s)://HOST:PORT` (optionally
    `?token=...&db=...`) -> a Milvus server."""
    if not url or url == "faiss":
        from indexer.faiss_store import FaissFileStore

        return FaissFileStore(index_dir)
    try:
        from indexer.milvus_store import MilvusStore
    except ImportError as error:
        raise VectorStoreError(f"vector store {url!r} is Milvus, whose client is not installed: "
                           f"pip install 'imgsearch[milvus]' ({error})") from None
    if url.startswith("milvus-lite:") or url.endswith(".db"):
        path = url.removeprefix("milvus-lite:").removeprefix("//")
        if not path.endswith(".db"):
            raise ValueError(f"vector store {url!r}: a milvus-lite file must end in .db")
        return MilvusStore(path, lock_dir=index_dir)
    if url.startswith(("http://", "https://")):
        parts = urlsplit(url)
        # unquote, not unquote_plus: a '+' in a token is a '+'
        options = dict((key, unquote(value)) for key, _, value in (p.partition("=") for p in parts.query.split("&")))
        return MilvusStore(parts._replace(query="").geturl(), lock_dir=index_dir, token=options.get("token", ""),
                           db_name=options.get("db", ""))
    raise ValueError(f"vector store {url!r}: expected faiss, milvus-lite:PATH.db, or http://HOST:19530 (Milvus)")
