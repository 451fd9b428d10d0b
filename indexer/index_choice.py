"""Which index a set of vectors gets, for every vector store (faiss builds it from `factory`,
Milvus from `kind` and `params`).

The rule (`choose_index`), for N vectors of dimension D and a memory budget:
- N x D <= 2**23 (8M floats, 32 MB): exact `Flat`. One query scans every vector, so its time is
  memory-bound and grows with N x D: 0.7 ms at 5.6k x 1,024, 10.7 ms at 33k x 1,024 and 18 ms at
  100k x 512 on 2 cores. The cap keeps a single query near 3 ms, inside a 5 ms serving budget.
- larger: `IVF-PQ` (nlist about 4 sqrt(N), D/8 sub-quantisers of 8 bits, about D/8 bytes a
  vector), with exact re-ranking of 10k candidates from the full vectors when those fit the
  budget (not on GPU). Measured at 1M x 512 on clustered vectors with faiss: recall@10 0.975 at
  0.23 ms a query, 480x faster than exact search; HNSW32 needed efSearch 3,328 for 0.958 there
  (11.5 ms), because its graph links well-separated clusters poorly. HNSW stays available by name
  (`kind="hnsw"`): on less clustered data it can be the faster of the two.
Figures: `bench/index_bench.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

FLAT_MAX_FLOATS = 2**23  # N x D up to which exact search is fast enough to serve
HNSW_M = 32


@dataclass
class IndexChoice:
    kind: str            # flat | hnsw | ivfpq
    factory: str         # the faiss factory string (other stores translate kind and params)
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
    return IndexChoice("ivfpq", f"IVF{nlist},PQ{sub}x8", refine=refine,
                       params={"nprobe": 16, "nlist": nlist, "pq_m": sub})
