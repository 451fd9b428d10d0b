"""The Milvus vector store: a Milvus server (standalone or a cluster: shards and replicas are
Milvus's business) or milvus-lite, an embedded Milvus in one local file.

    imgsearch_<name>_v000007_image     one collection per version and modality:
    imgsearch_<name>_v000007_caption   id (catalogue row id, primary key), owner (the caption's image), vector
    imgsearch_<name>_image             aliases of the current version's collections; the image alias
    imgsearch_<name>_caption           is the pointer the app polls (Milvus switches an alias atomically)
    imgsearch_manifests                one row per complete version: its manifest (JSON)

A version is complete once its manifest row exists, which `stage` writes last; `switch` moves the
aliases. Servers search a version's own collections, not the aliases, so a search that started
on the previous version finishes there; old collections are dropped by `remove_old_versions`.
Index kinds follow the same size rule as faiss (`index_choice`): FLAT, then IVF_PQ (or HNSW by
name), with nprobe / ef tuned at build time to the recall target. milvus-lite has no IVF_PQ; it
gets IVF_SQ8 (one byte a dimension) instead.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Hashable
from pathlib import Path

import numpy as np
from pymilvus import DataType, MilvusClient, MilvusException

from indexer.index_choice import HNSW_M, IndexChoice, choose_index
from indexer.recall_tuning import exact_search, query_sample, recall_at_k, tune_parameter
from indexer.vector_store import (
    ARRAY_KEYS,
    MODALITIES,
    IndexSettings,
    SearchableVersion,
    VectorStore,
    VectorStoreError,
    Version,
    check_index_name,
)

# milvus-lite has no MVCC timestamp to give a scan: its in-process gRPC server logs the unimplemented
# call with a traceback, and pymilvus warns, on every scan (which then reads the latest data).
logging.getLogger("pymilvus.client.iterator.query_iterator").setLevel(logging.ERROR)
logging.getLogger("grpc._server").setLevel(logging.CRITICAL)

MANIFESTS = "imgsearch_manifests"
MAX_TOP_K = 16_384        # Milvus refuses larger limits
INSERT_BATCH = 20_000
_VERSION_COLLECTION = re.compile(r"^imgsearch_(?P<name>[A-Za-z0-9_]+)_v(?P<number>\d{6})_(?P<modality>image|caption)$")


def collection_prefix(name: str) -> str:
    """`imgsearch_` and the index name with every character but letters and digits written as
    `_xx` (hex): Milvus names allow only letters, digits and '_', and no two names may collide."""
    escaped = "".join(c if c.isascii() and c.isalnum() else f"_{ord(c):02x}" for c in check_index_name(name))
    return f"imgsearch_{escaped}"


def _unescape(escaped: str) -> str:
    return re.sub(r"_([0-9a-f]{2})", lambda m: chr(int(m.group(1), 16)), escaped)


def version_collection(name: str, number: int, modality: str) -> str:
    return f"{collection_prefix(name)}_v{number:06d}_{modality}"


def alias(name: str, modality: str) -> str:
    return f"{collection_prefix(name)}_{modality}"


class MilvusStore(VectorStore):
    kind = "milvus"
    poll_seconds = 1.0  # the stamp is a round trip: servers ask at most once a second

    def __init__(self, uri: str, lock_dir: Path, token: str = "", db_name: str = ""):
        super().__init__(lock_dir)
        self.uri = uri
        self.client = _connect(uri, token, db_name)
        self._ensure_manifests()

    @property
    def location(self) -> str:
        return self.uri

    # --- reading -------------------------------------------------------------------------------
    def index_names(self) -> list[str]:
        names = []
        for each in self.client.list_aliases().get("aliases", []):
            found = re.fullmatch(r"imgsearch_(.+)_image", each)
            if found:
                names.append(_unescape(found.group(1)))
        return sorted(names)

    def stamp(self, name: str) -> Hashable | None:
        return self._alias_target(alias(name, "image"))

    def _alias_target(self, pointer: str) -> str | None:
        # Asked only for an alias that exists: pymilvus logs every failed call with a traceback.
        if pointer not in self.client.list_aliases().get("aliases", []):
            return None  # nothing switched in yet
        return self.client.describe_alias(pointer)["collection_name"]

    def current(self, name: str) -> Version | None:
        collection = self.stamp(name)
        if collection is None:
            return None
        number = int(_VERSION_COLLECTION.match(collection).group("number"))
        return Version(name, number, self._manifest(name, number))

    def versions(self, name: str) -> list[int]:
        rows = self.client.query(MANIFESTS, filter=f'name == "{check_index_name(name)}"', output_fields=["number"],
                                 consistency_level="Strong")  # a manifest just written must be seen
        present = set(self.client.list_collections())
        return sorted(int(r["number"]) for r in rows
                      if all(version_collection(name, int(r["number"]), m) in present for m in MODALITIES))

    def read_arrays(self, version: Version, keys: tuple[str, ...] = ARRAY_KEYS) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {}
        for modality in MODALITIES:
            wanted = [k for k in keys if k.startswith(modality)]
            if not wanted:
                continue
            rows, owners, vectors = self._scan(version_collection(version.name, version.number, modality),
                                               version.manifest["embed_dim"], f"{modality}_vectors" in wanted)
            arrays |= {f"{modality}_ids": rows, f"{modality}_vectors": vectors}
            if modality == "caption":
                arrays["caption_image_ids"] = owners
        return {key: arrays[key] for key in keys}

    def open(self, version: Version, gpu: bool = False) -> MilvusVersion:
        for modality in MODALITIES:  # a restarted milvus-lite has released every collection
            self.client.load_collection(version_collection(version.name, version.number, modality))
        return MilvusVersion(version, self.client)

    # --- writing -------------------------------------------------------------------------------
    def stage(self, name: str, number: int, arrays: dict[str, np.ndarray], manifest: dict,
              settings: IndexSettings) -> dict:
        if settings.codes is not None:
            raise VectorStoreError(f"compact codes ({settings.codes}) are built by the faiss store only; Milvus "
                                   "indexes keep float vectors (use its IVF_PQ index type for compression)")
        started = time.perf_counter()
        described = {}
        try:
            for modality in MODALITIES:
                described[f"{modality}_index"] = self._write_collection(
                    version_collection(name, number, modality), arrays[f"{modality}_ids"],
                    arrays["image_ids"] if modality == "image" else arrays["caption_image_ids"],
                    arrays[f"{modality}_vectors"], settings)
            manifest = {**manifest, **described, "store": "milvus", "location": f"{self.uri} "
                        f"{version_collection(name, number, 'image')} {version_collection(name, number, 'caption')}",
                        "gpu": False, "index_seconds": time.perf_counter() - started}
            self.client.upsert(MANIFESTS, [{"key": f"{name}/{number}", "name": name, "number": number,
                                            "manifest": json.dumps(manifest), "unused": [0.0, 0.0]}])
            self.client.flush(MANIFESTS)
        except BaseException:
            self._drop_version(name, number)
            raise
        return manifest

    def switch(self, name: str, number: int) -> None:
        if number not in self.versions(name):
            raise FileNotFoundError(f"cannot switch {name} to missing version {number} in {self.uri}")
        # The caption alias first: readers follow the image alias, so they see the new version only
        # once both point at it.
        for modality in ("caption", "image"):
            target, pointer = version_collection(name, number, modality), alias(name, modality)
            if self._alias_target(pointer) is None:
                self.client.create_alias(target, pointer)
            else:
                self.client.alter_alias(target, pointer)

    def discard(self, name: str, number: int) -> None:
        current = self.current(name)
        if current is not None and current.number == number:
            raise ValueError(f"version {number} of {name!r} is current: switch to another before removing it")
        self._drop_version(name, number)

    def remove_abandoned(self, name: str) -> list[str]:
        """Collections of versions without a manifest row (a build killed while staging)."""
        complete = set(self.versions(name))
        prefix = collection_prefix(name)
        abandoned = []
        for collection in self.client.list_collections():
            found = _VERSION_COLLECTION.match(collection)
            if found and f"imgsearch_{found.group('name')}" == prefix and int(found.group("number")) not in complete:
                self.client.drop_collection(collection)
                abandoned.append(collection)
        return abandoned

    # --- helpers -------------------------------------------------------------------------------
    def _ensure_manifests(self) -> None:
        if self.client.has_collection(MANIFESTS):
            self.client.load_collection(MANIFESTS)
            return
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=256)
        schema.add_field("name", DataType.VARCHAR, max_length=128)
        schema.add_field("number", DataType.INT64)
        schema.add_field("manifest", DataType.VARCHAR, max_length=65_535)
        schema.add_field("unused", DataType.FLOAT_VECTOR, dim=2)  # Milvus wants a vector field in every collection
        index = self.client.prepare_index_params()
        index.add_index(field_name="unused", index_type="FLAT", metric_type="L2")
        self.client.create_collection(MANIFESTS, schema=schema, index_params=index)

    def _manifest(self, name: str, number: int) -> dict:
        rows = self.client.get(MANIFESTS, ids=[f"{name}/{number}"], output_fields=["manifest"],
                               consistency_level="Strong")
        if not rows:
            raise FileNotFoundError(f"{self.uri}: version {number} of {name!r} has no manifest")
        return json.loads(rows[0]["manifest"])

    def _write_collection(self, collection: str, ids: np.ndarray, owners: np.ndarray, vectors: np.ndarray,
                          settings: IndexSettings) -> dict:
        if self.client.has_collection(collection):  # left by a build that crashed before its manifest
            self.client.drop_collection(collection)
        dim = vectors.shape[1]
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("owner", DataType.INT64)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        self.client.create_collection(collection, schema=schema)
        for start in range(0, len(ids), INSERT_BATCH):
            end = start + INSERT_BATCH
            self.client.insert(collection, [{"id": int(i), "owner": int(o), "vector": v} for i, o, v in
                                            zip(ids[start:end], owners[start:end], vectors[start:end], strict=True)])
        self.client.flush(collection)
        choice = choose_index(len(vectors), dim, settings.memory_budget, settings.index_type)
        index_type, build_params = _milvus_index(choice, lite=self.uri.endswith(".db"))
        index = self.client.prepare_index_params()
        index.add_index(field_name="vector", index_type=index_type, metric_type="IP", params=build_params)
        self.client.create_index(collection, index)
        self.client.load_collection(collection)
        param, value, recall = self._tune(collection, choice, ids, vectors, settings.recall_target)
        return {"kind": choice.kind, "factory": index_type + "".join(f",{k}={v}" for k, v in build_params.items()),
                "search_param": param, "search_value": value, "recall": recall, "count": int(len(vectors))}

    def _tune(self, collection: str, choice: IndexChoice, ids: np.ndarray, vectors: np.ndarray,
              recall_target: float) -> tuple[str | None, int | None, float]:
        """The smallest nprobe / ef whose recall@10 reaches the target. The queries are indexed
        vectors, each left out of its own answer and of the truth (otherwise every query finds
        itself, and a recall measured that way overstates what new queries get by up to 1/k)."""
        if choice.kind == "flat" or len(vectors) <= 1:
            return None, None, 1.0
        sample = query_sample(vectors, 500)
        k = min(10, len(vectors) - 1)
        _, positions = exact_search(vectors, sample, k + 1)
        truth = ids[positions[:, 1:]]  # each query's nearest is itself
        own = ids[positions[:, :1]]
        param = "ef" if choice.kind == "hnsw" else "nprobe"

        def recall_with(value: int) -> float:
            found = _search(self.client, collection, sample, k + 1, param, value)[1]
            others = [row[row != mine][:k] for row, mine in zip(found, own[:, 0], strict=True)]
            return recall_at_k(np.stack([np.pad(o, (0, k - len(o)), constant_values=-1) for o in others]), truth)

        value, recall = tune_parameter(recall_with, 4096 if param == "ef" else choice.params["nlist"], recall_target)
        return param, value, recall

    def _scan(self, collection: str, dim: int, with_vectors: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every row of a collection: (ids, owners, vectors or an empty array)."""
        fields = ["id", "owner"] + (["vector"] if with_vectors else [])
        rows, owners, vectors = [], [], [np.zeros((0, dim), np.float32)]
        iterator = self.client.query_iterator(collection, batch_size=10_000, filter="id >= -1",
                                              output_fields=fields)
        try:
            while batch := iterator.next():
                rows += [r["id"] for r in batch]
                owners += [r["owner"] for r in batch]
                if with_vectors:  # float32 per batch: Python floats would take eight times the memory
                    vectors.append(np.asarray([r["vector"] for r in batch], np.float32).reshape(-1, dim))
        finally:
            iterator.close()
        return np.asarray(rows, np.int64), np.asarray(owners, np.int64), np.concatenate(vectors)

    def _drop_version(self, name: str, number: int) -> None:
        for modality in MODALITIES:
            self.client.drop_collection(version_collection(name, number, modality))
        self.client.delete(MANIFESTS, ids=[f"{name}/{number}"])


def _milvus_index(choice: IndexChoice, lite: bool) -> tuple[str, dict]:
    """Milvus's name and build parameters for the chosen kind. No exact re-ranking stage here:
    Milvus's IVF indexes answer from their codes, so nprobe is tuned higher to reach the target."""
    if choice.kind == "flat":
        return "FLAT", {}
    if choice.kind == "hnsw":
        return "HNSW", {"M": HNSW_M, "efConstruction": choice.params.get("efConstruction", 40)}
    if lite:
        return "IVF_SQ8", {"nlist": choice.params["nlist"]}
    return "IVF_PQ", {"nlist": choice.params["nlist"], "m": choice.params["pq_m"], "nbits": 8}


def _search(client: MilvusClient, collection: str, queries: np.ndarray, k: int, param: str | None,
            value: int | None) -> tuple[np.ndarray, np.ndarray]:
    params = {} if param is None or value is None else {param: max(int(value), k) if param == "ef" else int(value)}
    results = client.search(collection, data=[np.asarray(q, np.float32) for q in queries], limit=k,
                            anns_field="vector", output_fields=["owner"],
                            search_params={"metric_type": "IP", "params": params})
    scores = np.full((len(queries), k), np.finfo(np.float32).min, np.float32)
    ids = np.full((len(queries), k), -1, np.int64)
    for row, hits in enumerate(results):
        for column, hit in enumerate(hits[:k]):
            scores[row, column], ids[row, column] = hit["distance"], hit["id"]
    return scores, ids


class MilvusVersion(SearchableVersion):
    """A version's two Milvus collections, searched by name (not through the aliases)."""

    def __init__(self, version: Version, client: MilvusClient):
        super().__init__(version)
        self.client = client

    def _collection(self, modality: str) -> str:
        return version_collection(self.version.name, self.number, modality)

    def _search_index(self, modality: str, queries: np.ndarray, k: int, query_modality: str
                      ) -> tuple[np.ndarray, np.ndarray]:
        described = self.manifest[f"{modality}_index"]
        return _search(self.client, self._collection(modality), queries, min(k, MAX_TOP_K),
                       described.get("search_param"), described.get("search_value"))

    def vectors_of(self, modality: str, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        found = {}
        for start in range(0, len(ids), 10_000):  # one request per 10k ids: requests have a size limit
            rows = self.client.get(self._collection(modality), ids=ids[start:start + 10_000],
                                   output_fields=["vector"])
            found.update({int(r["id"]): r["vector"] for r in rows})
        held = [i for i in ids if i in found]
        return np.asarray(held, np.int64), np.asarray([found[i] for i in held], np.float32).reshape(
            len(held), self.manifest["embed_dim"])


def _connect(uri: str, token: str, db_name: str) -> MilvusClient:
    # milvus-lite logs a failed start (a file another process holds) with a traceback before
    # pymilvus raises; the error below says it in one line instead.
    lite_log = logging.getLogger("milvus_lite.server_manager")
    level = lite_log.level
    lite_log.setLevel(logging.CRITICAL)
    try:
        return MilvusClient(uri=uri, token=token, db_name=db_name)
    except MilvusException as error:
        if uri.endswith(".db"):
            raise VectorStoreError(
                f"cannot open the milvus-lite file {uri} ({error.message}): milvus-lite lets one process "
                "open a file, so it may be open elsewhere (a running server: reindex through POST "
                "/api/admin/reindex, serve with one worker, or run a Milvus server)") from None
        raise VectorStoreError(f"cannot reach Milvus at {uri}: {error.message}") from None
    finally:
        lite_log.setLevel(level)
