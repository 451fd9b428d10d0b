"""faiss index choice, build, tuning and I/O on vectors with structure (clusters), never on a GPU
unless one is present."""

from __future__ import annotations

import numpy as np
import pytest

from indexer import faiss_index as fi


def clustered(n: int, dim: int = 32, clusters: int = 50, seed: int = 0) -> np.ndarray:
    """Unit vectors around a few cluster centres, with low intrinsic dimension: ANN has neighbours to find."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    basis = rng.normal(size=(clusters, 4, dim))
    labels = rng.integers(0, clusters, n)
    vectors = centres[labels] + np.einsum("nk,nkd->nd", rng.normal(size=(n, 4)) * 0.5, basis[labels])
    vectors += rng.normal(scale=0.05, size=vectors.shape)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def test_exact_search_matches_a_full_sort():
    vectors = clustered(500)
    queries = vectors[:20] + 0.01
    scores, ids = fi.exact_search(vectors, queries, 10, chunk=7)
    full = queries @ vectors.T
    assert np.array_equal(ids, np.argsort(-full, axis=1)[:, :10])
    assert np.allclose(scores, np.take_along_axis(full, ids, axis=1))


def test_choice_follows_size_and_memory_budget():
    assert fi.choose_index(16_000, 512).kind == "flat"
    assert fi.choose_index(100_000, 512).kind == "ivfpq"  # a flat scan of 100k x 512 takes ~18 ms
    large = fi.choose_index(1_000_000, 512)
    assert large.kind == "ivfpq" and large.refine and large.factory == "IVF4096,PQ64x8"
    assert not fi.choose_index(1_000_000, 512, gpu=True).refine  # no exact re-ranking on GPU
    tight = fi.choose_index(1_000_000, 512, memory_budget=fi.parse_memory("1G"))
    assert tight.kind == "ivfpq" and not tight.refine  # the full vectors (2 GB) do not fit: codes only
    assert fi.choose_index(10, 512, kind="hnsw").kind == "hnsw"  # an explicit choice wins
    with pytest.raises(ValueError, match="unknown index type 'lsh'"):
        fi.choose_index(10, 8, kind="lsh")
    assert fi.parse_memory("512M") == 512 * 2**20 and fi.parse_memory("2GB") == 2 * 2**30
    with pytest.raises(ValueError, match="expected a size"):
        fi.parse_memory("lots")


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_each_index_reaches_the_recall_target_after_tuning(kind, tmp_path):
    vectors = clustered(6000)
    index = fi.build_index(vectors, fi.choose_index(len(vectors), 32, kind=kind))
    value, recall = fi.tune_search_param(index, vectors, recall_target=0.9, queries=200)
    assert recall >= 0.9
    assert (value is None) == (kind == "flat")
    queries = vectors[:50]
    _, truth = fi.exact_search(vectors, queries, 10)
    fi.write_index(index, str(tmp_path / "x.faiss"))
    loaded = fi.read_index(str(tmp_path / "x.faiss"))
    if value is not None:
        fi.set_search_param(loaded, value)
    _, found = loaded.search(queries, 10)
    assert fi.recall_at_k(found, truth) >= 0.85
    assert fi.search_param_name(loaded) == {"flat": None, "hnsw": "efSearch", "ivfpq": "nprobe"}[kind]


def test_empty_index_builds():
    index = fi.build_index(np.zeros((0, 8), np.float32), fi.choose_index(0, 8))
    assert index.ntotal == 0 and fi.tune_search_param(index, np.zeros((0, 8), np.float32)) == (None, 1.0)


@pytest.mark.gpu
@pytest.mark.skipif(not fi.gpu_available(), reason="needs faiss-gpu and a CUDA GPU")
def test_gpu_index_matches_cpu():
    vectors = clustered(5000)
    cpu = fi.build_index(vectors, fi.choose_index(len(vectors), 32, kind="flat"))
    gpu = fi.build_index(vectors, fi.choose_index(len(vectors), 32, kind="flat"), gpu=True)
    assert type(gpu).__name__.startswith("Gpu")
    assert np.array_equal(cpu.search(vectors[:20], 5)[1], gpu.search(vectors[:20], 5)[1])
    ivf = fi.build_index(vectors, fi.choose_index(len(vectors), 32, kind="ivfpq"), gpu=True)
    assert fi.tune_search_param(ivf, vectors, 0.8, queries=100)[1] >= 0.8
