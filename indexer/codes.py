"""Compact codes for an index version, chosen per build (`imgsearch index --codes ...`): what the
index holds for each vector instead of its float32 components, and the small model, learned from
the gallery at build time, that turns item and query vectors into codes.

- `binary:BITS` - DCMH hash codes (`models.hashing`): an image head and a text head over the
  encoder's embedding, trained on the gallery's own image-caption pairs; searched by Hamming
  distance, BITS / 8 bytes a vector. A query gets the code of its own modality's head.
- `catalysed:BYTES` - a spreading-vectors catalyser (`models.spreading`) trained on a sample of the
  gallery's image and caption vectors (keeping how each set ranks for either kind of query), then
  product quantisation at BYTES bytes a vector.

Either way the float vectors stay on disk (memory-mapped, not loaded), and unless `rerank` is 0
the `rerank` nearest by code are re-ranked by their exact inner product with the query.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from models.hashing import DCMHConfig, HashingHead, binary_codes, train_dcmh
from models.spreading import Catalyser, CatalyserConfig, train_catalyser

KINDS = ("binary", "catalysed")
DEFAULT_RERANK = 100
_SPEC = re.compile(r"^(?P<kind>[a-z]+):(?P<size>\d+)$")
DCMH_TRAIN_PAIRS = 20_000   # pairs the hashing heads train on (a sample beyond that)
CATALYSER_SUBVECTOR = 2     # catalyser output dimensions per PQ byte (see the catalyser's bench)


@dataclass(frozen=True)
class CodeSpec:
    kind: str       # binary | catalysed
    size: int       # bits (binary) or bytes (catalysed) per vector
    rerank: int = DEFAULT_RERANK  # nearest by code re-ranked with the float vectors; 0: by code only

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"codes {self.kind!r}: expected binary:BITS or catalysed:BYTES")
        if self.kind == "binary" and (self.size <= 0 or self.size % 8):
            raise ValueError(f"binary codes need a positive multiple of 8 bits, not {self.size}")
        if self.kind == "catalysed" and not 1 <= self.size <= 256:
            raise ValueError(f"catalysed codes take 1 to 256 bytes a vector, not {self.size}")
        if self.rerank < 0:
            raise ValueError(f"rerank must be 0 or more, not {self.rerank}")

    @classmethod
    def parse(cls, text: str | None, rerank: int = DEFAULT_RERANK) -> CodeSpec | None:
        """'binary:64', 'catalysed:16' -> a spec; None or 'float' -> None (float vectors)."""
        if text is None or text.strip().lower() == "float":
            return None
        match = _SPEC.match(text.strip().lower())
        if not match:
            raise ValueError(f"codes {text!r}: expected float, binary:BITS (e.g. binary:64) or catalysed:BYTES "
                             "(e.g. catalysed:16)")
        return cls(match["kind"], int(match["size"]), rerank)

    @classmethod
    def from_manifest(cls, manifest: dict) -> CodeSpec | None:
        stored = manifest.get("codes")
        return None if not stored else cls(stored["kind"], int(stored["size"]), int(stored["rerank"]))

    def __str__(self) -> str:
        return f"{self.kind}:{self.size}"


class CodeModel(ABC):
    """Item and query vectors -> what the version's indexes hold and search with."""

    spec: CodeSpec

    @abstractmethod
    def item_codes(self, modality: str, vectors: np.ndarray) -> np.ndarray:
        """Codes of the items of one index ('image' or 'caption')."""

    @abstractmethod
    def query_codes(self, query_modality: str, vectors: np.ndarray) -> np.ndarray:
        """Codes of queries that are texts ('caption') or images ('image')."""

    @abstractmethod
    def state(self) -> dict:
        """What `load_code_model` needs, as tensors and plain values."""

    def save(self, path: Path) -> None:
        torch.save({"spec": asdict(self.spec), **self.state()}, path)


class HashCodes(CodeModel):
    """DCMH heads: each standardises its input (the training rows' mean and spread) first."""

    def __init__(self, spec: CodeSpec, heads: dict[str, HashingHead], scaling: dict[str, tuple[torch.Tensor, ...]]):
        self.spec, self.heads, self.scaling = spec, heads, scaling

    @torch.no_grad()
    def _codes(self, side: str, vectors: np.ndarray) -> np.ndarray:
        mean, spread = self.scaling[side]
        inputs = (torch.from_numpy(np.ascontiguousarray(vectors, np.float32)) - mean) / spread
        return binary_codes(self.heads[side].eval()(inputs))

    def item_codes(self, modality: str, vectors: np.ndarray) -> np.ndarray:
        return self._codes(_side(modality), vectors)

    def query_codes(self, query_modality: str, vectors: np.ndarray) -> np.ndarray:
        return self._codes(_side(query_modality), vectors)

    def state(self) -> dict:
        return {"heads": {side: head.state_dict() for side, head in self.heads.items()},
                "hidden": self.heads["image"].net[0].out_features, "in_dim": self.heads["image"].net[0].in_features,
                "scaling": {side: list(values) for side, values in self.scaling.items()}}


class CatalysedCodes(CodeModel):
    """One catalyser for both modalities (the index quantises its outputs)."""

    def __init__(self, spec: CodeSpec, catalyser: Catalyser):
        self.spec, self.catalyser = spec, catalyser

    def item_codes(self, modality: str, vectors: np.ndarray) -> np.ndarray:
        return self.catalyser.transform(vectors)

    def query_codes(self, query_modality: str, vectors: np.ndarray) -> np.ndarray:
        return self.catalyser.transform(vectors)

    def state(self) -> dict:
        model = self.catalyser
        return {"catalyser": model.state_dict(), "in_dim": model.in_dim, "out_dim": model.out_dim,
                "hidden": model.hidden}


def _side(modality: str) -> str:
    if modality not in ("image", "caption"):
        raise ValueError(f"modality {modality!r}: expected image or caption")
    return "image" if modality == "image" else "text"


def catalyser_dim(spec: CodeSpec) -> int:
    return spec.size * CATALYSER_SUBVECTOR


def fit_codes(spec: CodeSpec, arrays: dict[str, np.ndarray], progress: bool = True, seed: int = 0) -> CodeModel:
    """Learn the code model of a version from its arrays (vector_store.ARRAY_KEYS)."""
    if spec.kind == "binary":
        return _fit_hash_codes(spec, arrays, progress, seed)
    dim = arrays["image_vectors"].shape[1]
    if catalyser_dim(spec) > dim:
        raise ValueError(f"catalysed:{spec.size} maps to {catalyser_dim(spec)} dimensions, more than the "
                         f"encoder's {dim}: use at most catalysed:{dim // CATALYSER_SUBVECTOR}")
    sets = [arrays[key] for key in ("image_vectors", "caption_vectors") if len(arrays[key])]
    smallest = min((len(s) for s in sets), default=0)
    if smallest < 4:
        raise ValueError(f"catalysed codes are learned from the gallery's vectors: {smallest} are too few")
    negatives = min(CatalyserConfig.negatives, smallest - 1)
    config = CatalyserConfig(out_dim=catalyser_dim(spec), negatives=negatives,
                             positives=min(CatalyserConfig.positives, negatives - 1), seed=seed)
    return CatalysedCodes(spec, train_catalyser(sets, config, progress).model)


def _fit_hash_codes(spec: CodeSpec, arrays: dict[str, np.ndarray], progress: bool, seed: int) -> HashCodes:
    """DCMH on the gallery's pairs: each caption with its image; items of one image are similar."""
    caption_owner = arrays["caption_image_ids"]
    if len(caption_owner) < 2:
        raise ValueError("binary codes are learned from the gallery's image-caption pairs, and this gallery has "
                         f"{len(caption_owner)} caption(s): index it with --codes float or catalysed:BYTES")
    row_of = {int(image_id): row for row, image_id in enumerate(arrays["image_ids"])}
    rows = np.arange(len(caption_owner))
    if len(rows) > DCMH_TRAIN_PAIRS:
        rows = np.sort(np.random.default_rng(seed).choice(len(rows), DCMH_TRAIN_PAIRS, replace=False))
    image_rows = torch.as_tensor([row_of[int(caption_owner[r])] for r in rows])
    images = torch.from_numpy(np.asarray(arrays["image_vectors"], np.float32))[image_rows]
    texts = torch.from_numpy(np.asarray(arrays["caption_vectors"], np.float32)[rows])
    scaling = {side: (x.mean(dim=0), x.std(dim=0) + 1e-6) for side, x in (("image", images), ("text", texts))}
    config = DCMHConfig(bits=spec.size, epochs=20, weighted=True, theta_scale=1.0 / spec.size, seed=seed)
    heads = train_dcmh((images - scaling["image"][0]) / scaling["image"][1],
                       (texts - scaling["text"][0]) / scaling["text"][1], image_rows, config, progress)
    return HashCodes(spec, {"image": heads.image, "text": heads.text}, scaling)


def load_code_model(path: Path) -> CodeModel:
    state = torch.load(path, weights_only=True)
    spec = CodeSpec(**state["spec"])
    if spec.kind == "binary":
        heads = {}
        for side, weights in state["heads"].items():
            heads[side] = HashingHead(state["in_dim"], spec.size, state["hidden"])
            heads[side].load_state_dict(weights)
        return HashCodes(spec, heads, {side: tuple(values) for side, values in state["scaling"].items()})
    catalyser = Catalyser(state["in_dim"], state["out_dim"], state["hidden"])
    catalyser.load_state_dict(state["catalyser"])
    return CatalysedCodes(spec, catalyser.eval())
