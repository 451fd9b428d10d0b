"""faiss indexes over L2-normalised vectors with inner product: choice, build, tuning, search, I/O.

The choice rule (`choose_index`), for N vectors of dimension D and a memory budget:
- N x D <= 2**23 (8M floats, 32 MB): exact `Flat`. One query scans every vector, so its time is
  memory-bound and grows with N x D: 0.7 ms at 5.6k x 1,024, 10.7 ms at 33k x 1,024 and 18 ms at
  100k x 512 on 2 cores. The cap keeps a single query near 3 ms, inside a 5 ms serving budget.
- larger: `IVF-PQ` (nlist about 4 sqrt(N), D/8 sub-quantisers of 8 bits, about D/8 bytes a
  vector), with exact re-ranking of 10k candidates from the full vectors when those fit the
  budget (not on GPU). Measured at 1M x 512 on clustered vectors: recall@10 0.975 at 0.23 ms a
  query, 480x faster than exact search; HNSW32 needed efSearch 3,328 for 0.958 there (11.5 ms),
  because its graph links well-separated clusters poorly. HNSW stays available by name
  (`kind="hnsw"`): on less clustered data it can be the faster of the two.
The search parameter (efSearch / nprobe) is tuned on a sample so that recall@10 against exact
search reaches the target, as autofaiss does. Figures: `bench/index_bench.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import faiss
import numpy as np

FLAT_MAX_FLOATS = 2**23  # N x D up to which exact search is fast enough to serve
HNSW_M = 32


@dataclass
class IndexChoice:
    kind: str            # flat | hnsw | ivfpq
    factory: str         # the faiss factory string
    refine: bool = False  # IVF-PQ: re-rank candidates with the exact vectors
    params: dict = field(default_factory=dict)


def parse_memory(text: str | int | None) -> int | None:
    """'16G', '512M', '2.5G' or a byte count -> bytes."""
    if text is None or isinstance(text, int):
        return text
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    text = text.strip().upper().removesuffix("B")
    try:
        return int(float(text[:-1]) * units[text[-1]]) if text and text[-1] in units else int(float(text))
    except ValueError as error:
        raise ValueError(f"memory budget {text!r}: expected a size like 512M or 4G") from error


def estimated_bytes(kind: str, n: int, dim: int, refine: bool = False) -> int:
    if kind == "flat":
        return n * dim * 4
    if kind == "hnsw":
        return n * (dim * 4 + HNSW_M * 2 * 4)
    return n * (dim // 8 + 8) + (n * dim * 4 if refine else 0)


def choose_index(n: int, dim: int, memory_budget: int | None = None, kind: str = "auto",
                 gpu: bool = False) -> IndexChoice:
    """The index for `n` vectors (see the module docstring for the rule); `kind` overrides it."""
    budget = memory_budget or 2**62
    if kind == "auto":
        kind = "flat" if n * dim <= FLAT_MAX_FLOATS else "ivfpq"
    if kind == "flat":
        return IndexChoice("flat", "Flat")
    if kind == "hnsw":
        return IndexChoice("hnsw", f"HNSW{HNSW_M}", params={"efConstruction": 40, "efSearch": 64})
    if kind != "ivfpq":
        raise ValueError(f"unknown index type {kind!r}: expected auto, flat, hnsw or ivfpq")
    nlist = max(1, min(2 ** round(math.log2(4 * math.sqrt(max(n, 1)))), n // 39 or 1))
    sub = next(m for m in (dim // 8, dim // 4, dim // 2, dim) if m and dim % m == 0)
    # Exact re-ranking keeps the full vectors in RAM beside the codes; not offered on GPU, where the
    # refine wrapper cannot be cloned to the device.
    refine = not gpu and estimated_bytes("ivfpq", n, dim, refine=True) <= budget
    return IndexChoice("ivfpq", f"IVF{nlist},PQ{sub}x8", refine=refine, params={"nprobe": 16})


def build_index(vectors: np.ndarray, choice: IndexChoice, gpu: bool = False, train_sample: int = 200_000,
                seed: int = 0) -> faiss.Index:
    """Build the chosen index on float32 L2-normalised `vectors` (inner product)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    index = faiss.index_factory(dim, choice.factory, faiss.METRIC_INNER_PRODUCT)
    if choice.kind == "hnsw":
        index.hnsw.efConstruction = choice.params.get("efConstruction", 40)
    if choice.refine:
        index = faiss.IndexRefineFlat(index)
        index.k_factor = choice.params.get("k_factor", 10)
    if gpu:
        index = to_gpu(index)
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        sample = vectors if n <= train_sample else vectors[rng.choice(n, train_sample, replace=False)]
        index.train(sample)
    if n:
        index.add(vectors)
    set_search_param(index, choice)
    return index


def _unrefined(index: faiss.Index) -> faiss.Index:
    """The candidate-generating index inside an exact re-ranking wrapper (or the index itself)."""
    return faiss.downcast_index(index.base_index) if isinstance(index, faiss.IndexRefine) else index


def search_param_name(index: faiss.Index) -> str | None:
    base = _unrefined(index)
    if isinstance(base, faiss.IndexHNSW):
        return "efSearch"
    if not _is_cpu(base):  # GpuIndexIVFPQ, GpuIndexIVFFlat... are not IndexIVF subclasses
        return "nprobe" if "IVF" in type(base).__name__ else None
    return "nprobe" if isinstance(faiss.try_extract_index_ivf(base), faiss.IndexIVF) else None


def _is_cpu(index: faiss.Index) -> bool:
    return not type(index).__name__.startswith("Gpu")


def set_search_param(index: faiss.Index, choice_or_value: IndexChoice | int) -> None:
    """Apply efSearch or nprobe (from a choice's params, or a value) to an index."""
    name = search_param_name(index)
    if name is None:
        return
    value = (choice_or_value if isinstance(choice_or_value, int)
             else choice_or_value.params.get(name))
    if value is None:
        return
    faiss.ParameterSpace().set_index_parameter(index, name, int(value))


def tune_search_param(index: faiss.Index, vectors: np.ndarray, recall_target: float = 0.95, k: int = 10,
                      queries: int | np.ndarray = 500, seed: int = 0) -> tuple[int | None, float]:
    """The smallest efSearch/nprobe (found by doubling, then bisection to within 1/8) whose recall@k
    against exact search reaches `recall_target`; returns (value, recall). Exact indexes return
    (None, 1.0); an index that cannot reach the target returns its largest value and recall.

    `queries` is a query set, or a count of indexed vectors to sample as queries (each then finds
    itself, which flatters recall by up to 1/k: pass real held-out queries where there are some)."""
    name = search_param_name(index)
    if name is None or len(vectors) == 0:
        return None, 1.0
    if isinstance(queries, np.ndarray):
        sample = np.ascontiguousarray(queries, dtype=np.float32)
    else:
        rng = np.random.default_rng(seed)
        sample = vectors[rng.choice(len(vectors), min(queries, len(vectors)), replace=False)]
    _, truth = exact_search(vectors, sample, k)
    limit = 4096 if name == "efSearch" else max(1, _nlist(index))
    def recall_with(value: int) -> float:
        set_search_param(index, value)
        return recall_at_k(index.search(sample, k)[1], truth)

    low, value, recall = 0, 1, recall_with(1)
    while recall < recall_target and value < limit:  # doubling finds a bracket...
        low, value = value, min(2 * value, limit)
        recall = recall_with(value)
    if recall < recall_target:
        return value, recall
    while value - low > max(1, value // 8):  # ...then bisection narrows it (to within 1/8)
        middle = (low + value) // 2
        middle_recall = recall_with(middle)
        if middle_recall >= recall_target:
            value, recall = middle, middle_recall
        else:
            low = middle
    set_search_param(index, value)
    return value, recall


def _nlist(index: faiss.Index) -> int:
    base = _unrefined(index)
    return int(base.nlist) if not _is_cpu(base) else int(faiss.extract_index_ivf(base).nlist)


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int, chunk: int = 4096
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force inner-product top-k with NumPy (the reference every index is checked against)."""
    k = min(k, len(vectors))
    scores_out = np.empty((len(queries), k), dtype=np.float32)
    ids_out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), chunk):
        scores = queries[start:start + chunk] @ vectors.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        ids_out[start:start + chunk] = np.take_along_axis(top, order, axis=1)
        scores_out[start:start + chunk] = np.take_along_axis(top_scores, order, axis=1)
    return scores_out, ids_out


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Share of the true top-k ids that the index returned in its top-k (order ignored)."""
    hits = sum(len(set(f[f >= 0]) & set(t)) for f, t in zip(found, truth, strict=True))
    return hits / truth.size if truth.size else 1.0


def gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def to_gpu(index: faiss.Index) -> faiss.Index:
    """Move an index to all GPUs when faiss-gpu and a GPU are present (HNSW stays on the CPU)."""
    if not gpu_available() or isinstance(index, faiss.IndexHNSW | faiss.IndexRefine):
        return index
    options = faiss.GpuMultipleClonerOptions()
    options.useFloat16 = "PQ" in type(index).__name__  # GPU IVF-PQ needs float16 look-up tables past 48 bytes a code
    return faiss.index_cpu_to_all_gpus(index, co=options)


def to_cpu(index: faiss.Index) -> faiss.Index:
    return faiss.index_gpu_to_cpu(index) if gpu_available() and not _is_cpu(index) else index


def write_index(index: faiss.Index, path: str) -> None:
    faiss.write_index(to_cpu(index), path)


def read_index(path: str, gpu: bool = False, mmap: bool = False) -> faiss.Index:
    flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
    index = faiss.read_index(path, flags)
    return to_gpu(index) if gpu else index
