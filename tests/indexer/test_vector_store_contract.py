"""The vector store contract, run on every implementation: faiss files and milvus-lite (an
embedded Milvus in a local file). What the indexer and the app rely on: a staged version is
invisible until the switch, search and vectors by id agree with exact NumPy search, approximate
indexes reach their recall target, versions are listed, kept and removed as promised, and no
query fails while versions switch."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexer.build import BuildOptions, build_index
from indexer.recall_tuning import exact_search, recall_at_k
from indexer.serving import LiveIndex
from indexer.vector_store import IndexSettings, VectorStore, open_vector_store
from models import load_encoder

STORES = ["faiss", "milvus-lite"]
EXACT = IndexSettings(index_type="flat")


@pytest.fixture(params=STORES)
def store(request, tmp_path) -> VectorStore:
    if request.param == "milvus-lite":
        pytest.importorskip("pymilvus", reason="the Milvus store needs pymilvus and milvus-lite (imgsearch[milvus])")
        return open_vector_store(f"milvus-lite:{tmp_path / 'vectors.db'}", tmp_path / "locks")
    return open_vector_store(None, tmp_path / "idx")


def _unit(rng: np.random.Generator, n: int, dim: int = 16) -> np.ndarray:
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _arrays(n: int, seed: int = 0, dim: int = 16) -> dict[str, np.ndarray]:
    """n images (ids 1000..) with two captions each (ids 5000..), the catalogue's shape."""
    rng = np.random.default_rng(seed)
    image_ids = np.arange(1000, 1000 + n, dtype=np.int64)
    return {"image_ids": image_ids, "image_vectors": _unit(rng, n, dim),
            "caption_ids": np.arange(5000, 5000 + 2 * n, dtype=np.int64),
            "caption_image_ids": np.repeat(image_ids, 2), "caption_vectors": _unit(rng, 2 * n, dim)}


def _manifest(number: int, dim: int = 16) -> dict:
    return {"name": "gallery", "version": number, "embed_dim": dim, "checkpoint_hash": f"hash{number}",
            "image_count": 0, "caption_count": 0}


def _publish(store: VectorStore, number: int, arrays: dict, settings: IndexSettings = EXACT) -> dict:
    manifest = store.stage("gallery", number, arrays, _manifest(number), settings)
    store.switch("gallery", number)
    return manifest


def test_a_staged_version_is_served_only_after_the_switch(store):
    assert store.current("gallery") is None and store.stamp("gallery") is None and store.index_names() == []
    first = _arrays(40)
    manifest = store.stage("gallery", 1, first, _manifest(1), EXACT)
    assert manifest["image_index"]["count"] == 40 and manifest["caption_index"]["count"] == 80
    assert manifest["store"] == store.kind and manifest["location"] and manifest["checkpoint_hash"] == "hash1"
    assert store.versions("gallery") == [1] and store.current("gallery") is None  # complete, not current
    store.switch("gallery", 1)
    stamp = store.stamp("gallery")
    assert store.current("gallery").number == 1 and store.index_names() == ["gallery"]
    assert store.current("gallery").manifest["image_index"] == manifest["image_index"]
    store.stage("gallery", 2, _arrays(10, seed=1), _manifest(2), EXACT)
    assert store.current("gallery").number == 1 and store.stamp("gallery") == stamp
    store.switch("gallery", 2)
    assert store.current("gallery").number == 2 and store.stamp("gallery") != stamp
    with pytest.raises(FileNotFoundError, match="missing version v?0*7"):
        store.switch("gallery", 7)


def test_search_matches_exact_search_and_restricts_to_a_subset(store):
    arrays = _arrays(60)
    _publish(store, 1, arrays)
    served = store.open(store.current("gallery"))
    queries = _unit(np.random.default_rng(5), 4)
    for modality in ("image", "caption"):
        vectors, ids = arrays[f"{modality}_vectors"], arrays[f"{modality}_ids"]
        scores, found = served.search(modality, queries, 5)
        truth_scores, truth = exact_search(vectors, queries, 5)
        assert np.array_equal(found, ids[truth]) and np.allclose(scores, truth_scores, atol=1e-5)
    subset = arrays["image_ids"][[3, 17, 40]]
    scores, found = served.search("image", queries, 10, among=np.append(subset, 99_999))  # unknown ids are ignored
    assert found.shape == (4, 3) and set(found[0]) == set(subset)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    assert served.search("image", queries, 1000)[1].shape == (4, 60)  # k is capped at the index size
    assert served.search("image", queries, 0)[1].shape == (4, 0)


def test_vectors_by_id_and_the_arrays_a_rebuild_reuses(store):
    arrays = _arrays(30)
    _publish(store, 1, arrays)
    current = store.current("gallery")
    served = store.open(current)
    wanted = arrays["image_ids"][[7, 2, 7]]
    assert np.allclose(served.image_vectors(wanted), arrays["image_vectors"][[7, 2, 7]], atol=1e-6)
    assert served.image_vector(42) is None
    with pytest.raises(KeyError, match="image 42"):
        served.image_vectors(np.asarray([1000, 42]))
    stored = store.read_arrays(current)
    for modality in ("image", "caption"):  # any row order, but ids and vectors stay paired
        order = np.argsort(stored[f"{modality}_ids"])
        assert np.array_equal(stored[f"{modality}_ids"][order], arrays[f"{modality}_ids"])
        assert np.allclose(stored[f"{modality}_vectors"][order], arrays[f"{modality}_vectors"], atol=1e-6)
    order = np.argsort(stored["caption_ids"])
    assert np.array_equal(stored["caption_image_ids"][order], arrays["caption_image_ids"])
    assert set(store.read_arrays(current, ("image_ids",))) == {"image_ids"}


def _clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, dim)).astype(np.float32)
    vectors = centres[rng.integers(0, 50, n)] + 0.4 * rng.normal(size=(n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_an_approximate_index_reaches_its_recall_target(store):
    n, dim = 4000, 32
    vectors = _clustered(n + 100, dim, seed=3)
    ids = np.arange(10, 10 + n, dtype=np.int64)
    arrays = {"image_ids": ids, "image_vectors": vectors[:n], "caption_ids": ids, "caption_image_ids": ids,
              "caption_vectors": vectors[:n]}
    manifest = store.stage("gallery", 1, arrays, _manifest(1, dim), IndexSettings(index_type="ivfpq",
                                                                                 recall_target=0.9))
    store.switch("gallery", 1)
    described = manifest["image_index"]
    assert described["kind"] == "ivfpq" and described["search_param"] == "nprobe" and described["recall"] >= 0.9
    queries = vectors[n:]  # held out: measured, not tuned on
    found = store.open(store.current("gallery")).search("image", queries, 10)[1]
    assert recall_at_k(found, ids[exact_search(vectors[:n], queries, 10)[1]]) >= 0.85


def test_old_versions_are_removed_and_the_current_one_never(store):
    for number in (1, 2, 3, 4):
        _publish(store, number, _arrays(5, seed=number))
    assert store.versions("gallery") == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="is current"):
        store.discard("gallery", 4)
    with pytest.raises(ValueError, match="keep must be at least 1"):
        store.remove_old_versions("gallery", keep=0)
    assert store.remove_old_versions("gallery", keep=2) == [1, 2]
    assert store.versions("gallery") == [3, 4] and store.current("gallery").number == 4
    store.switch("gallery", 3)  # back to the previous version: it is still complete
    assert store.current("gallery").number == 3
    assert store.stats("gallery")["versions"] == [3, 4] and store.stats("gallery")["current"] == 3


def _leave_a_killed_build(store: VectorStore, number: int) -> None:
    """What `kill -9` during `stage` leaves: half a version, with no manifest."""
    if store.kind == "faiss":
        half = store.index_dir / "gallery" / "versions" / ".tmp-killed"
        half.mkdir(parents=True)
        (half / "images.faiss").write_bytes(b"half")
    else:
        from indexer.milvus_store import version_collection

        store.client.create_collection(version_collection("gallery", number, "image"), dimension=16)


def test_what_a_killed_build_left_is_removed(store):
    _publish(store, 1, _arrays(5))
    _leave_a_killed_build(store, 2)
    assert store.versions("gallery") == [1]  # never listed as a version
    assert len(store.remove_abandoned("gallery")) == 1
    assert store.remove_abandoned("gallery") == [] and store.current("gallery").number == 1


def test_no_query_fails_while_versions_switch(store):
    _publish(store, 1, _arrays(200, seed=1))
    live = LiveIndex(store, "gallery")
    query = _unit(np.random.default_rng(9), 1)
    failures: list[Exception] = []
    served_versions: set[int] = set()
    stop = threading.Event()

    def keep_searching() -> None:
        while not stop.is_set():
            try:
                live.reload_if_changed()
                version = live.current
                _, found = version.search("image", query, 5)
                assert (found >= 1000).all()
                served_versions.add(version.number)
            except Exception as error:  # any failure is what this test is about
                failures.append(error)

    searchers = [threading.Thread(target=keep_searching) for _ in range(2)]
    for searcher in searchers:
        searcher.start()
    for number in (2, 3, 4):
        _publish(store, number, _arrays(200, seed=number))
        store.remove_old_versions("gallery", keep=2)
    stop.set()
    for searcher in searchers:
        searcher.join()
    live.reload_if_changed()
    assert not failures and live.current.number == 4 and len(served_versions) >= 2


def test_a_version_staged_but_never_committed_is_removed_by_the_next_build(store, gallery: Path, encoder_checkpoint,
                                                                           sessions, tmp_path):
    """kill -9 between staging and the catalogue's commit leaves a complete version that no
    catalogue row accepts: it must not count as a version to keep, nor ever become current."""
    options = BuildOptions(progress=False, workers=0)
    build = lambda: build_index(gallery=str(gallery), encoder_spec=str(encoder_checkpoint),  # noqa: E731
                                name="gallery", index_dir=tmp_path / "idx", sessions=sessions, options=options,
                                vector_store=store, full=True)
    assert build().version == 1
    store.stage("gallery", 2, store.read_arrays(store.current("gallery")), store.current("gallery").manifest, EXACT)
    assert store.versions("gallery") == [1, 2]
    assert build().version == 2 and store.versions("gallery") == [1, 2]  # the orphan went; a real 2 took its place
    with sessions() as session:
        from sqlalchemy import select

        from indexer.catalogue import IndexVersion

        assert dict(session.execute(select(IndexVersion.version, IndexVersion.status)).all()) == {
            1: "superseded", 2: "active"}


def test_an_incremental_rebuild_reuses_vectors_in_either_store(store, gallery: Path, encoder_checkpoint, sessions,
                                                               tmp_path):
    options = BuildOptions(progress=False, workers=0)

    def build():
        return build_index(gallery=str(gallery), encoder_spec=str(encoder_checkpoint), name="gallery",
                           index_dir=tmp_path / "idx", sessions=sessions, options=options, vector_store=store)

    assert build().version == 1
    first = store.read_arrays(store.current("gallery"))
    Image.new("RGB", (32, 32), (9, 9, 9)).save(sorted((gallery / "images").glob("*.png"))[0])
    report = build()
    assert report.version == 2 and report.encoded_images == 1 and report.reused_images == 29
    second = store.read_arrays(store.current("gallery"))
    old = dict(zip(first["image_ids"].tolist(), first["image_vectors"], strict=True))
    new = dict(zip(second["image_ids"].tolist(), second["image_vectors"], strict=True))
    assert sum(np.allclose(old[i], new[i], atol=1e-6) for i in set(old) & set(new)) == 29
    encoder = load_encoder(encoder_checkpoint)
    served = store.open(store.current("gallery"))
    scores, found = served.search("image", encoder.encode_text(["a red circle"]).numpy(), 3)
    assert found.shape == (1, 3) and (found > 0).all() and scores[0, 0] >= scores[0, 2]
    assert build().status == "up-to-date"


# --- opening a store: URLs, and the errors a user sees -------------------------------------------
def test_store_urls_and_their_errors(tmp_path):
    from indexer.faiss_store import FaissFileStore
    from indexer.vector_store import VectorStoreError

    assert isinstance(open_vector_store(None, tmp_path), FaissFileStore)
    assert isinstance(open_vector_store("faiss", tmp_path), FaissFileStore)
    with pytest.raises(ValueError, match="expected faiss, milvus-lite:PATH.db, or http"):
        open_vector_store("redis://localhost", tmp_path)
    with pytest.raises(ValueError, match="index name 'a/b'"):
        open_vector_store(None, tmp_path).current("a/b")
    pytest.importorskip("pymilvus", reason="the Milvus store needs pymilvus and milvus-lite (imgsearch[milvus])")
    with pytest.raises(ValueError, match="a milvus-lite file must end in .db"):
        open_vector_store("milvus-lite:vectors", tmp_path)
    with pytest.raises(VectorStoreError, match="cannot reach Milvus at http://127.0.0.1:1:"):
        open_vector_store("http://127.0.0.1:1?token=secret", tmp_path)  # the token is not echoed
    assert open_vector_store(f"milvus-lite:{tmp_path / 'v.db'}", tmp_path).location == str(tmp_path / "v.db")


def test_a_milvus_lite_file_open_elsewhere_is_one_line_from_the_cli(tmp_path):
    """milvus-lite lets one process open a file: a second one (here the CLI, while this test
    holds it as a server would) is told why, in one line, with what to do instead."""
    import os
    import subprocess
    import sys

    pytest.importorskip("pymilvus", reason="the Milvus store needs pymilvus and milvus-lite (imgsearch[milvus])")
    path = tmp_path / "vectors.db"
    held = open_vector_store(f"milvus-lite:{path}", tmp_path)
    env = {**os.environ, "VECTOR_STORE_URL": f"milvus-lite:{path}", "DATABASE_URL": f"sqlite:///{tmp_path / 'c.db'}",
           "INDEX_DIR": str(tmp_path / "idx")}
    done = subprocess.run([sys.executable, "-m", "app.cli", "admin", "status"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "milvus-lite lets one process open a file" in done.stderr and "POST /api/admin/reindex" in done.stderr
    assert held.index_names() == []  # the holder is unaffected
