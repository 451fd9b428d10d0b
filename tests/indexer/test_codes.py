"""Compact codes in the index: the spec, learned code models, the code search with and without
re-ranking, a faiss store version holding codes, and builds that keep or change them."""

from __future__ import annotations

import numpy as np
import pytest

from indexer import faiss_index
from indexer.build import BuildOptions, build_index
from indexer.codes import CodeSpec, fit_codes, load_code_model
from indexer.faiss_store import FaissFileStore
from indexer.vector_store import IndexSettings, VectorStoreError
from models.hashing import hamming_distances


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _paired_arrays(images: int = 120, per_image: int = 2, dim: int = 24, seed: int = 0) -> dict[str, np.ndarray]:
    """Images and captions near their image (a shared space, as an encoder's)."""
    rng = np.random.default_rng(seed)
    image_vectors = _unit(rng.normal(size=(images, dim)))
    owners = np.repeat(np.arange(images), per_image)
    captions = _unit(image_vectors[owners] + 0.15 * rng.normal(size=(len(owners), dim)))
    return {"image_ids": np.arange(images, dtype=np.int64) + 100, "image_vectors": image_vectors,
            "caption_ids": np.arange(len(owners), dtype=np.int64) + 1000,
            "caption_image_ids": owners.astype(np.int64) + 100, "caption_vectors": captions}


@pytest.mark.parametrize(("text", "expected"), [
    ("binary:64", CodeSpec("binary", 64)), ("Catalysed:16", CodeSpec("catalysed", 16)), ("float", None), (None, None)])
def test_code_spec_parses(text, expected):
    assert CodeSpec.parse(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("binary:12", "multiple of 8"), ("binary", "expected float"), ("pq:16", "expected binary"),
    ("catalysed:0", "1 to 256")])
def test_code_spec_errors_name_the_problem(text, message):
    with pytest.raises(ValueError, match=message):
        CodeSpec.parse(text)


def test_binary_code_search_scores_are_the_cosine_of_the_codes_and_exact_hamming_order():
    rng = np.random.default_rng(1)
    items = np.packbits(rng.integers(0, 2, size=(50, 32)).astype(np.uint8), axis=1)
    queries = np.packbits(rng.integers(0, 2, size=(4, 32)).astype(np.uint8), axis=1)
    index, factory = faiss_index.build_code_index(items, "binary")
    scores, rows = faiss_index.search_codes(index, queries, 5, binary_bits=32)
    distances = hamming_distances(queries, items)
    assert factory == "BFlat32"
    np.testing.assert_array_equal(np.sort(distances, axis=1)[:, :5], np.take_along_axis(distances, rows, axis=1))
    np.testing.assert_allclose(scores, 1 - 2 * np.take_along_axis(distances, rows, axis=1) / 32)


def test_re_ranking_every_candidate_is_exact_search():
    arrays = _paired_arrays()
    model = fit_codes(CodeSpec("binary", 16), arrays, progress=False)
    vectors, queries = arrays["image_vectors"], arrays["caption_vectors"][:20]
    index, _ = faiss_index.build_code_index(model.item_codes("image", vectors), "binary")
    scores, rows = faiss_index.search_codes(index, model.query_codes("caption", queries), 5, binary_bits=16,
                                            rerank=len(vectors), vectors=vectors, queries=queries)
    exact = queries @ vectors.T
    np.testing.assert_array_equal(rows, np.argsort(-exact, axis=1)[:, :5])
    np.testing.assert_allclose(scores, np.sort(exact, axis=1)[:, ::-1][:, :5], rtol=1e-5)


@pytest.mark.parametrize("spec", [CodeSpec("binary", 32), CodeSpec("catalysed", 4)])
def test_code_models_find_the_pairs_and_survive_a_save(spec, tmp_path):
    arrays = _paired_arrays()
    model = fit_codes(spec, arrays, progress=False)
    images = model.item_codes("image", arrays["image_vectors"])
    captions = model.query_codes("caption", arrays["caption_vectors"])
    index, _ = faiss_index.build_code_index(images, spec.kind)
    _, rows = faiss_index.search_codes(index, captions, 10, binary_bits=spec.size if spec.kind == "binary" else 0)
    owners = arrays["caption_image_ids"] - 100
    hit_rate = np.mean([owner in found for owner, found in zip(owners, rows, strict=True)])
    assert hit_rate > 0.5  # chance: 10 of 120
    model.save(tmp_path / "codes.pt")
    loaded = load_code_model(tmp_path / "codes.pt")
    assert loaded.spec == spec
    np.testing.assert_array_equal(loaded.item_codes("image", arrays["image_vectors"]), images)


def test_binary_codes_need_captions():
    arrays = _paired_arrays()
    arrays["caption_image_ids"] = arrays["caption_image_ids"][:0]
    arrays["caption_vectors"] = arrays["caption_vectors"][:0]
    with pytest.raises(ValueError, match="image-caption pairs"):
        fit_codes(CodeSpec("binary", 16), arrays, progress=False)


def test_a_faiss_version_with_codes_searches_its_codes_and_reranks(tmp_path):
    arrays = _paired_arrays()
    store = FaissFileStore(tmp_path / "indexes")
    manifest = {"name": "codes", "version": 1, "checkpoint_hash": "0" * 64}
    for rerank in (0, 500):
        spec = CodeSpec("binary", 32, rerank)
        stored = store.stage("codes", rerank + 1, arrays, {**manifest, "version": rerank + 1},
                             IndexSettings(codes=spec))
        assert stored["codes"]["bytes_per_vector"] == 4 and stored["image_index"]["kind"] == "binary"
        assert stored["image_index"]["recall_queries"] == "caption"
        store.switch("codes", rerank + 1)
        version = store.open(store.current("codes"))
        queries = arrays["caption_vectors"][:8]
        scores, ids = version.search("image", queries, 5, query_modality="caption")
        assert ids.shape == (8, 5) and set(ids.ravel()) <= set(arrays["image_ids"])
        if rerank:  # every image re-ranked: exactly the float answer
            exact = np.argsort(-(queries @ arrays["image_vectors"].T), axis=1)[:, :5]
            np.testing.assert_array_equal(ids, arrays["image_ids"][exact])
            assert stored["image_index"]["recall"] == 1.0
        else:
            assert set(np.round(scores.ravel() * 16).astype(int)) <= set(range(-16, 17))
        # the other direction: captions for image queries
        _, caption_ids = version.search("caption", arrays["image_vectors"][:3], 4, query_modality="image")
        assert set(caption_ids.ravel()) <= set(arrays["caption_ids"])


def test_milvus_refuses_codes_with_a_clear_error(tmp_path):
    pytest.importorskip("pymilvus")
    from indexer.milvus_store import MilvusStore

    store = MilvusStore(str(tmp_path / "m.db"), lock_dir=tmp_path)
    with pytest.raises(VectorStoreError, match="faiss store only"):
        store.stage("x", 1, _paired_arrays(), {}, IndexSettings(codes=CodeSpec("binary", 16)))


def test_builds_keep_the_codes_until_told_otherwise(gallery, encoder_checkpoint, tmp_path, sessions):
    index_dir = tmp_path / "idx"

    def build(**options):
        return build_index(gallery=str(gallery), encoder_spec=str(encoder_checkpoint), name="main",
                           index_dir=index_dir, sessions=sessions,
                           options=BuildOptions(progress=False, workers=0, **options))

    def codes() -> dict | None:
        return FaissFileStore(index_dir).current("main").manifest["codes"]

    build(codes="binary:16", rerank=0)
    assert codes() == {**codes(), "kind": "binary", "size": 16, "rerank": 0}
    assert build().status == "up-to-date"  # the same codes: nothing to do
    assert build(rerank=20).status == "built" and codes()["rerank"] == 20  # re-ranking alone changes
    assert build(codes="catalysed:4").status == "built" and codes()["kind"] == "catalysed"
    assert build(codes="float").status == "built" and codes() is None
    assert FaissFileStore(index_dir).current("main").manifest["image_index"]["kind"] == "flat"
    with pytest.raises(ValueError, match="expected float"):
        build(codes="binary")


def test_cli_builds_codes_and_refuses_a_bad_spec_in_one_line(gallery, encoder_checkpoint, tmp_path):
    from tests.indexer.test_build import _cli

    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'cat.db'}", "INDEX_DIR": str(tmp_path / "idx")}
    args = ("index", "--gallery", str(gallery), "--encoder", str(encoder_checkpoint), "--name", "demo",
            "--workers", "0")
    built = _cli(env, *args, "--codes", "binary:16", "--rerank", "50")
    assert built.returncode == 0, built.stderr
    assert "image index BFlat16,rerank50" in built.stdout and "DCMH 16 bits" in built.stderr  # progress bar
    assert "up to date at version 1" in _cli(env, "admin", "reindex").stdout  # the codes are kept
    bad = _cli(env, *args, "--codes", "binary:12")
    assert bad.returncode == 1 and "multiple of 8" in bad.stderr and "Traceback" not in bad.stderr


def test_catalysed_codes_for_a_gallery_without_captions_and_a_tiny_modality(tmp_path):
    arrays = _paired_arrays(images=30, per_image=1)
    store = FaissFileStore(tmp_path / "indexes")
    manifest = {"name": "cat", "checkpoint_hash": "0" * 64}
    # 30 captions: too few to train 8-bit sub-quantisers, kept float; 30 images likewise
    stored = store.stage("cat", 1, arrays, {**manifest, "version": 1}, IndexSettings(codes=CodeSpec("catalysed", 4)))
    assert stored["image_index"]["factory"].startswith("Flat8") and stored["codes"]["bytes_per_vector"] == 32
    no_captions = {**arrays, "caption_ids": arrays["caption_ids"][:0], "caption_image_ids": arrays["caption_ids"][:0],
                   "caption_vectors": arrays["caption_vectors"][:0]}
    stored = store.stage("cat", 2, no_captions, {**manifest, "version": 2},
                         IndexSettings(codes=CodeSpec("catalysed", 4, rerank=0)))
    assert stored["image_index"]["recall_queries"] == "image" and stored["calibration"] is None
    store.switch("cat", 2)
    version = store.open(store.current("cat"))
    assert version.search("image", arrays["image_vectors"][:2], 3)[1].shape == (2, 3)
    assert version.search("caption", arrays["image_vectors"][:2], 3)[1].shape == (2, 0)


def test_a_catalyser_wider_than_the_embedding_is_refused():
    with pytest.raises(ValueError, match="at most catalysed:12"):
        fit_codes(CodeSpec("catalysed", 16), _paired_arrays(dim=24), progress=False)


def test_few_captions_beside_many_images_still_train_a_catalyser():
    arrays = _paired_arrays(images=2000, per_image=1)
    for key in ("caption_ids", "caption_image_ids", "caption_vectors"):
        arrays[key] = arrays[key][:40]
    model = fit_codes(CodeSpec("catalysed", 4), arrays, progress=False)
    assert model.item_codes("caption", arrays["caption_vectors"]).shape == (40, 8)


def test_publish_vectors_keeps_the_codes_of_the_version_it_replaces(encoder_checkpoint, tmp_path, sessions):
    from indexer.build import publish_vectors
    from tests.indexer.test_build import _catalogue_rows

    image_ids, caption_ids = _catalogue_rows(sessions, 60)
    arrays = _paired_arrays(images=60, per_image=1, dim=32)
    arrays.update(image_ids=np.asarray(image_ids), caption_ids=np.asarray(caption_ids),
                  caption_image_ids=np.asarray(image_ids))
    common = {"name": "pub", "index_dir": tmp_path / "idx", "sessions": sessions, "gallery": "/imported",
              "encoder_spec": str(encoder_checkpoint), "arrays": arrays}
    publish_vectors(**common, options=BuildOptions(progress=False, codes="binary:16"))
    publish_vectors(**common, options=BuildOptions(progress=False))
    assert FaissFileStore(tmp_path / "idx").current("pub").manifest["codes"]["kind"] == "binary"


def test_a_milvus_store_refuses_codes_before_encoding(gallery, encoder_checkpoint, tmp_path, sessions, monkeypatch):
    from indexer import build

    class NotFaiss(FaissFileStore):
        kind = "milvus"

    monkeypatch.setattr(build, "resolve_encoder", lambda *a: pytest.fail("encoded before refusing"))
    with pytest.raises(VectorStoreError, match="faiss store only"):
        build_index(gallery=str(gallery), encoder_spec=str(encoder_checkpoint), name="m", index_dir=tmp_path,
                    sessions=sessions, options=BuildOptions(progress=False, codes="binary:16"),
                    vector_store=NotFaiss(tmp_path))
