"""The default vector store: faiss indexes and NumPy arrays in one directory per version
(`version_dirs` has the layout and its atomic switch). The index kind follows
`faiss_index.choose_index`; its search parameter is tuned at build time to the recall target."""

from __future__ import annotations

import json
import time
from collections.abc import Hashable
from pathlib import Path

import faiss
import numpy as np

from indexer import faiss_index, version_dirs
from indexer.codes import CodeModel, CodeSpec, fit_codes, load_code_model
from indexer.recall_tuning import exact_search, query_sample, recall_at_k
from indexer.vector_store import (
    ARRAY_KEYS,
    MODALITIES,
    IndexSettings,
    SearchableVersion,
    VectorStore,
    Version,
    other_modality,
)

CODES_FILE = "codes.pt"


class FaissFileStore(VectorStore):
    kind = "faiss"

    def __init__(self, index_dir: Path):
        super().__init__(index_dir)
        self.index_dir = Path(index_dir)

    @property
    def location(self) -> str:
        return str(self.index_dir)

    def index_names(self) -> list[str]:
        if not self.index_dir.is_dir():
            return []
        return sorted(p.name for p in self.index_dir.iterdir() if (p / version_dirs.POINTER).is_file())

    def current(self, name: str) -> Version | None:
        """Raises FileNotFoundError when CURRENT names a version directory that is gone."""
        stored = version_dirs.current_version(self.index_dir, name)
        return None if stored is None else Version(name, stored.number, stored.manifest)

    def stamp(self, name: str) -> Hashable | None:
        return version_dirs.pointer_stamp(self.index_dir, name)

    def versions(self, name: str) -> list[int]:
        return version_dirs.versions_on_disk(self.index_dir, name)

    def stage(self, name: str, number: int, arrays: dict[str, np.ndarray], manifest: dict,
              settings: IndexSettings) -> dict:
        temporary = version_dirs.start_build(self.index_dir, name)
        try:
            manifest = _write_version(temporary, arrays, manifest, settings)
            version_dirs.publish(self.index_dir, name, temporary, number)
        except BaseException:
            version_dirs.abandon_build(temporary)
            raise
        return manifest

    def switch(self, name: str, number: int) -> None:
        version_dirs.switch_current(self.index_dir, name, number)

    def discard(self, name: str, number: int) -> None:
        current = version_dirs.current_version(self.index_dir, name)
        if current is not None and current.number == number:
            raise ValueError(f"version {number} of {name!r} is current: switch to another before removing it")
        version_dirs.remove_version(self.index_dir, name, number)

    def remove_abandoned(self, name: str) -> list[str]:
        return version_dirs.remove_abandoned_builds(self.index_dir, name)

    def read_arrays(self, version: Version, keys: tuple[str, ...] = ARRAY_KEYS) -> dict[str, np.ndarray]:
        directory = self._directory(version)  # vectors mapped, not read: a build uses only the rows it reuses
        return {key: np.load(directory / f"{key}.npy", mmap_mode="r" if key.endswith("vectors") else None)
                for key in keys}

    def open(self, version: Version, gpu: bool = False) -> FaissVersion:
        return FaissVersion(version, self._directory(version), gpu)

    def _directory(self, version: Version) -> Path:
        return version_dirs.index_root(self.index_dir, version.name) / "versions" / version_dirs.version_dirname(
            version.number)


def _write_version(directory: Path, arrays: dict[str, np.ndarray], manifest: dict, settings: IndexSettings) -> dict:
    """The two indexes (float: sized and tuned; or compact codes), the id and vector arrays and the
    manifest."""
    started = time.perf_counter()
    gpu = settings.gpu and faiss_index.gpu_available()
    if settings.codes is None:
        described, codes = _write_float_indexes(directory, arrays, settings, gpu), None
    else:
        described, codes = _write_code_indexes(directory, arrays, settings.codes, settings.progress)
    for key in ARRAY_KEYS:
        np.save(directory / f"{key}.npy", arrays[key])
    final = directory.parent / version_dirs.version_dirname(manifest["version"])  # where publish moves it
    manifest = {**manifest, **described, "store": "faiss", "location": str(final), "gpu": gpu and codes is None,
                "codes": codes, "index_seconds": time.perf_counter() - started}
    if codes is not None and not codes["rerank"]:  # scores are the codes', not the cosines it was fitted on
        manifest["calibration"] = None
    (directory / "encoder.sha256").write_text(manifest["checkpoint_hash"] + "\n")
    (directory / version_dirs.MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def _write_float_indexes(directory: Path, arrays: dict[str, np.ndarray], settings: IndexSettings, gpu: bool
                         ) -> dict:
    described = {}
    for modality in MODALITIES:
        vectors = arrays[f"{modality}_vectors"]
        dim = vectors.shape[1]
        choice = faiss_index.choose_index(len(vectors), dim, settings.memory_budget, settings.index_type, gpu)
        index = faiss_index.build_index(vectors, choice, gpu)
        value, recall = faiss_index.tune_search_param(index, vectors, settings.recall_target)
        faiss_index.write_index(index, str(directory / f"{modality}s.faiss"))
        described[f"{modality}_index"] = {
            "kind": choice.kind, "factory": choice.factory + (",RFlat" if choice.refine else ""),
            "search_param": faiss_index.search_param_name(index), "search_value": value, "recall": recall,
            "count": int(len(vectors))}
    return described


def _write_code_indexes(directory: Path, arrays: dict[str, np.ndarray], spec: CodeSpec, progress: bool
                        ) -> tuple[dict, dict]:
    """Learn the code model from the version's vectors, index each modality's codes, and measure
    recall@10 against exact float search with the other modality's vectors as queries (the
    cross-modal searches the app serves; the same modality where the other has none)."""
    started = time.perf_counter()
    model = fit_codes(spec, arrays, progress)
    fit_seconds = time.perf_counter() - started
    model.save(directory / CODES_FILE)
    described, code_bytes = {}, {}
    for modality in MODALITIES:
        vectors = arrays[f"{modality}_vectors"]
        index, factory = faiss_index.build_code_index(model.item_codes(modality, vectors), spec.kind)
        code_bytes[modality] = faiss_index.code_bytes(index)
        faiss_index.write_code_index(index, str(directory / f"{modality}s.faiss"))
        other = other_modality(modality)
        asking = other if len(arrays[f"{other}_vectors"]) else modality
        described[f"{modality}_index"] = {
            "kind": spec.kind, "factory": f"{factory}" + (f",rerank{spec.rerank}" if spec.rerank else ""),
            "search_param": None, "search_value": None, "count": int(len(vectors)),
            "recall": _code_recall(CodeSearch(model, index, vectors), vectors, arrays[f"{asking}_vectors"], asking),
            "recall_queries": asking}
    return described, {"kind": spec.kind, "size": spec.size, "rerank": spec.rerank,
                       "bytes_per_vector": max(code_bytes.values()), "fit_seconds": round(fit_seconds, 2)}


def _code_recall(search: CodeSearch, vectors: np.ndarray, candidates: np.ndarray, query_modality: str,
                 k: int = 10, queries: int = 500) -> float:
    if len(vectors) == 0 or len(candidates) == 0:
        return 1.0
    sample = query_sample(np.asarray(candidates, np.float32), queries, seed=0)
    _, truth = exact_search(np.asarray(vectors, np.float32), sample, k)
    return recall_at_k(search(sample, min(k, len(vectors)), query_modality)[1], truth)


class CodeSearch:
    """Search one modality's code index with float queries (coded by `model`), re-ranked with the
    float `vectors` when the spec asks for it."""

    def __init__(self, model: CodeModel, index: faiss.Index | faiss.IndexBinary, vectors: np.ndarray):
        self.model, self.index, self.vectors = model, index, vectors

    def __call__(self, queries: np.ndarray, k: int, query_modality: str) -> tuple[np.ndarray, np.ndarray]:
        spec = self.model.spec
        return faiss_index.search_codes(self.index, self.model.query_codes(query_modality, queries), k,
                                        binary_bits=spec.size if spec.kind == "binary" else 0, rerank=spec.rerank,
                                        vectors=self.vectors, queries=queries)


class FaissVersion(SearchableVersion):
    """A version's two faiss indexes in memory (or on the GPU), its ids, and its vectors mapped
    from disk for arithmetic and filtered search."""

    def __init__(self, version: Version, directory: Path, gpu: bool = False):
        super().__init__(version)
        self.directory = directory
        self.indexes: dict[str, faiss.Index] = {}
        self.ids: dict[str, np.ndarray] = {}
        self._position_maps: dict[str, dict[int, int]] = {}
        self._vector_files: dict[str, np.ndarray] = {}
        spec = CodeSpec.from_manifest(self.manifest)
        self.code_searches: dict[str, CodeSearch] = {}
        code_model = load_code_model(directory / CODES_FILE) if spec else None
        for modality in MODALITIES:
            self.ids[modality] = np.load(directory / f"{modality}_ids.npy")
            path = str(directory / f"{modality}s.faiss")
            if code_model is not None:
                index = faiss_index.read_code_index(path, binary=spec.kind == "binary")
                self.code_searches[modality] = CodeSearch(code_model, index, self._vectors(modality))
                continue
            index = faiss_index.read_index(path, gpu=gpu)
            value = self.manifest[f"{modality}_index"].get("search_value")
            if value:
                faiss_index.set_search_param(index, int(value))
            self.indexes[modality] = index
        # Built now, not by the first image-id query: the id map of 1M images takes about a second,
        # and the vector files are opened while their version directory surely exists.
        _ = self._positions("image"), self._vectors("image"), self._vectors("caption")

    @property
    def image_ids(self) -> np.ndarray:
        return self.ids["image"]

    def _positions(self, modality: str) -> dict[int, int]:
        """Row id -> faiss row (built on first use; two threads may both build it, harmlessly)."""
        if modality not in self._position_maps:
            self._position_maps[modality] = {int(i): row for row, i in enumerate(self.ids[modality])}
        return self._position_maps[modality]

    def _vectors(self, modality: str) -> np.ndarray:
        if modality not in self._vector_files:
            self._vector_files[modality] = np.load(self.directory / f"{modality}_vectors.npy", mmap_mode="r")
        return self._vector_files[modality]

    def vectors_of(self, modality: str, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        positions = self._positions(modality)
        held = [i for i in ids if i in positions]
        return np.asarray(held, np.int64), np.asarray(self._vectors(modality)[[positions[i] for i in held]])

    def _search_index(self, modality: str, queries: np.ndarray, k: int, query_modality: str
                      ) -> tuple[np.ndarray, np.ndarray]:
        if modality in self.code_searches:
            scores, rows = self.code_searches[modality](queries, k, query_modality)
        else:
            scores, rows = self.indexes[modality].search(queries, k)
        return scores, np.where(rows >= 0, self.ids[modality][np.clip(rows, 0, None)], -1)
