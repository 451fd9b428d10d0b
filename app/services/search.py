"""The search service: queries become vectors, vectors become ranked, hydrated results.

Every query is reduced to one L2-normalised vector (a text, an image, or a weighted sum of
several: image - word + word is the common case, after Kiros et al. 2014), searched in the image
or the caption index of one served encoder, then joined with the catalogue.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar
from urllib.parse import urlencode

import anyio
import numpy as np
from PIL import Image
from sqlalchemy.orm import Session, sessionmaker

from app.schemas import CaptionHit, ImageHit, ImageRef, QueryAttention, SearchResponse
from app.services.errors import BadQuery, NotFound, UnknownWords
from app.services.images import open_gallery_image
from app.services.served import Served, ServedIndexes
from app.services.timing import StageClock
from indexer import catalogue_reads as queries

# Called with (mode, {stage: milliseconds}) after each query; the app feeds its Prometheus histograms.
TimingsObserver = Callable[[str, dict[str, float]], None]
Result = TypeVar("Result")


@dataclass
class QueryImage:
    """An image query: an uploaded (decoded) image or the id of a gallery image."""

    image: Image.Image | None = None
    image_id: int | None = None


@dataclass
class WeightedTerm:
    weight: float
    text: str | None = None
    image: QueryImage | None = None


@dataclass(frozen=True)
class Cutoff:
    """Results below either bound are dropped: the raw cosine, or the calibrated relevance (0-1)."""

    min_score: float | None = None
    min_relevance: float | None = None


@dataclass
class QueryVector:
    """A query reduced to one vector, with what the page should tell the user about it."""

    vector: np.ndarray
    modality: str                                       # what the vector comes from: "caption" (a text) or "image"
    warnings: list[str] = field(default_factory=list)  # e.g. unknown words ignored
    notes: list[str] = field(default_factory=list)     # e.g. "squares" read as "square"
    attention: QueryAttention | None = None             # where an attending encoder looked

    def add(self, other: QueryVector, weight: float) -> None:
        self.vector = self.vector + weight * other.vector
        self.warnings += [w for w in other.warnings if w not in self.warnings]
        self.notes += [n for n in other.notes if n not in self.notes]


def _rounded(weights: list) -> list:
    """Nested lists of weights at 4 decimals: the response stays short and readable."""
    return [_rounded(w) if isinstance(w, list) else round(float(w), 4) for w in weights]


MAX_COLLAPSE_CANDIDATES = 1600  # captions read at most to fill a page of distinct texts
MAX_IMAGES_PER_CAPTION = 10


def collapse_captions(hits: list[CaptionHit]) -> list[CaptionHit]:
    """One result per caption text (case, spacing and a final full stop ignored), at its best
    score, with how many captions share it and the images they describe, best first."""
    groups: dict[str, CaptionHit] = {}
    for hit in hits:
        key = " ".join(hit.text.lower().split()).rstrip(" .")
        first = groups.get(key)
        if first is None:
            groups[key] = hit.model_copy(update={"count": 1, "images": [hit.image]})
            continue
        first.count += 1
        known = {image.id for image in first.images}
        if hit.image.id not in known and len(first.images) < MAX_IMAGES_PER_CAPTION:
            first.images.append(hit.image)
    return list(groups.values())


def thumbnail_url(image_id: int) -> str:
    return f"/images/{image_id}/thumb"


def normalise(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    if norm < 1e-6:
        raise BadQuery("the query terms cancel out (their weighted sum is the zero vector)")
    return (vector / norm).astype(np.float32)


class SearchService:
    def __init__(self, served: ServedIndexes, sessions: sessionmaker[Session], max_query_chars: int = 500,
                 observe_timings: TimingsObserver | None = None, concurrency: int = 0):
        self.served, self.sessions, self.max_query_chars = served, sessions, max_query_chars
        self.observe_timings, self.concurrency = observe_timings, concurrency
        self._limiter: anyio.CapacityLimiter | None = None

    async def run(self, method: Callable[..., Result], *args, **kwargs) -> Result:
        """Run a query method in a worker thread, at most `concurrency` at once in this process,
        or (concurrency 0) right here on the event loop. Queries are CPU-bound: running more at
        once only shares the cores (and the database pool) between them, so all finish later."""
        if self.concurrency == 0:
            return method(*args, **kwargs)
        if self._limiter is None:  # created on first use: it needs a running event loop
            self._limiter = anyio.CapacityLimiter(self.concurrency)
        return await anyio.to_thread.run_sync(partial(method, *args, **kwargs), limiter=self._limiter)

    # --- queries to vectors --------------------------------------------------------------------
    def check_text(self, text: str) -> str:
        cleaned = " ".join(text.split())
        if not cleaned:
            raise BadQuery("the query text is empty")
        if len(cleaned) > self.max_query_chars:
            raise BadQuery(f"the query text is {len(cleaned)} characters; the limit is {self.max_query_chars}")
        if "\ufffd" in cleaned:
            raise BadQuery("the query text is not valid UTF-8")
        return cleaned

    def text_vector(self, served: Served, text: str, strict_words: bool = False) -> QueryVector:
        """The text's vector, a warning naming unknown words (or, with `strict_words`, UnknownWords),
        and a note naming the words read as another form (a plural as its singular, say)."""
        unknown = served.encoder.unknown_words(text)
        if unknown and strict_words:
            raise UnknownWords(unknown)
        text = self.check_text(text)
        warnings = [f"unknown word(s) ignored by {served.encoder.name}: {', '.join(unknown)}"] if unknown else []
        readings = served.encoder.readings(text)
        notes = [f"read {', '.join(map(str, readings))}"] if readings else []
        return QueryVector(served.encoder.encode_text([text])[0].cpu().numpy(), "caption", warnings, notes)

    def image_vector(self, served: Served, query: QueryImage) -> np.ndarray:
        if query.image is not None:
            return served.encoder.encode_image([query.image])[0].cpu().numpy()
        if query.image_id is None:
            raise BadQuery("give an image: an upload or a gallery image id")
        vector = served.loaded.image_vector(query.image_id)
        if vector is None:
            raise NotFound(f"image {query.image_id} is not in index {served.name!r}")
        return vector

    def combine(self, served: Served, terms: list[WeightedTerm], strict_words: bool) -> QueryVector:
        """sum_i w_i * v_i over the terms' normalised vectors, re-normalised. Its modality is that of
        the larger part, |sum over texts| against |sum over images|: image - red + blue is an
        image (the two words' difference is shorter than the photo's vector), ties too."""
        parts = {modality: QueryVector(np.zeros(served.encoder.embed_dim, np.float32), modality)
                 for modality in ("caption", "image")}
        for term in terms:
            if term.text is not None:
                parts["caption"].add(self.text_vector(served, term.text, strict_words), term.weight)
            elif term.image is not None:
                parts["image"].add(QueryVector(self.image_vector(served, term.image), "image"), term.weight)
            else:
                raise BadQuery("each term needs a text, an image id or an upload")
        texts, images = parts["caption"], parts["image"]
        larger = "caption" if np.linalg.norm(texts.vector) > np.linalg.norm(images.vector) else "image"
        total = QueryVector(texts.vector + images.vector, larger, texts.warnings + images.warnings,
                            texts.notes + images.notes)
        total.vector = normalise(total.vector)
        return total

    # --- the modes -----------------------------------------------------------------------------
    def text_to(self, target: str, text: str, k: int, offset: int = 0, cutoff: Cutoff = Cutoff(),
                index: str | None = None, attention: bool = False) -> SearchResponse:
        served, clock = self.served.get(index), StageClock()
        with clock.stage("encode"):
            query = self.text_vector(served, text)
        if attention:
            with clock.stage("attention"):
                query.attention = self._attention(served, query,
                                                  lambda: self._text_attention(served, self.check_text(text)))
        response = self._respond(served, clock, f"text->{target}", target, query, k, offset, cutoff)
        if target == "image" and served.encoder.imagines_texts:
            # A link, not the picture: the page fetches it beside the results, a client that
            # does not want it pays nothing. The version makes it a new URL (not a stale cached
            # picture) once a new model is published under the same index name.
            link = urlencode({"q": self.check_text(text), "index": served.name,
                              "version": served.loaded.number})
            response.imagined_image_url = f"/api/imagine?{link}"
        return response

    def image_to(self, target: str, query: QueryImage, k: int, offset: int = 0, cutoff: Cutoff = Cutoff(),
                 index: str | None = None, collapse: bool = True, attention: bool = False) -> SearchResponse:
        """The captions (or images) nearest an image. Identical caption texts are one result, with
        their count and images, unless `collapse` is False."""
        served, clock = self.served.get(index), StageClock()
        with clock.stage("encode"):
            vector = QueryVector(self.image_vector(served, query), "image")
        if attention:
            with clock.stage("attention"):
                vector.attention = self._attention(served, vector, lambda: self._image_attention(served, query, vector))
        generated = None
        if target == "caption" and served.encoder.describes_images:
            with clock.stage("describe"):
                try:
                    generated = served.encoder.describe([self.query_pixels(query)])[0]
                except NotFound as error:  # the file is gone, its vector is not: still answer
                    vector.warnings.append(f"no generated caption: {error.message}")
        exclude = {query.image_id} if query.image_id is not None and target == "image" else set()
        response = self._respond(served, clock, f"image->{target}", target, vector, k, offset, cutoff, exclude,
                                 collapse=collapse)
        response.generated_caption = generated
        return response

    def imagine_png(self, text: str, index: str | None = None, seed: int = 0,
                    version: int | None = None) -> tuple[bytes, bool]:
        """The serving encoder's imagined image for `text` as PNG bytes, and whether it may be cached:
        not when the link was made for another `version` (the picture is the served model's)."""
        served = self.served.get(index)
        cacheable = version is None or version == served.loaded.number
        if not served.encoder.imagines_texts:
            raise NotFound(f"index {served.name!r} serves encoder {served.encoder.name!r}, which has no image "
                           "generator (only GXN encoders trained with the imagine branch have one)")
        pixels = served.encoder.imagine([self.check_text(text)], seed=seed)[0]
        buffer = io.BytesIO()
        Image.fromarray(pixels.permute(1, 2, 0).numpy(), "RGB").save(buffer, "PNG")
        return buffer.getvalue(), cacheable

    @staticmethod
    def _attention(served: Served, query: QueryVector, compute: Callable[[], QueryAttention]) -> QueryAttention | None:
        """The query's attention when the encoder has some; otherwise a note saying why there is none."""
        if served.encoder.attends:
            return compute()
        query.notes.append(f"no attention to show: encoder {served.encoder.name!r} does not attend "
                           "(DAN encoders with attention steps do)")
        return None

    @staticmethod
    def _text_attention(served: Served, text: str) -> QueryAttention:
        entry = served.encoder.text_attention([text])[0]
        return QueryAttention(words=entry["words"], word_weights=_rounded(entry["weights"]))

    def _image_attention(self, served: Served, query: QueryImage, vector: QueryVector) -> QueryAttention | None:
        try:
            pixels = self.query_pixels(query)
        except NotFound as error:  # the file is gone, its vector is not: still answer
            vector.warnings.append(f"no attention map: {error.message}")
            return None
        grid = served.encoder.image_attention([pixels])[0]
        return QueryAttention(region_weights=_rounded(grid.tolist()))

    def query_pixels(self, query: QueryImage) -> Image.Image:
        """The query image itself: the upload, or the gallery file behind an image id."""
        if query.image is not None:
            return query.image
        with self.sessions() as session:
            info = queries.image_by_id(session=session, image_id=query.image_id)
        if info is None:
            raise NotFound(f"no image with id {query.image_id}")
        return open_gallery_image(info.id, info.file_path)

    def arithmetic(self, query: QueryImage, minus: list[str], plus: list[str], k: int, offset: int = 0,
                   cutoff: Cutoff = Cutoff(), minus_weight: float = 1.0, plus_weight: float = 1.0,
                   rerank_top: int | None = None, index: str | None = None) -> SearchResponse:
        """image - sum(minus words) + sum(plus words), normalised; words the encoder does not know
        are refused (422 naming them): silently dropping one would answer a different question."""
        terms = [WeightedTerm(1.0, image=query)]
        terms += [WeightedTerm(-minus_weight, text=w) for w in minus]
        terms += [WeightedTerm(plus_weight, text=w) for w in plus]
        return self.compose(terms, "image", k, offset, cutoff, rerank_top, index, strict_words=True,
                            exclude_ids={query.image_id} if query.image_id is not None else set())

    def compose(self, terms: list[WeightedTerm], target: str, k: int, offset: int = 0, cutoff: Cutoff = Cutoff(),
                rerank_top: int | None = None, index: str | None = None, strict_words: bool = False,
                exclude_ids: set[int] | None = None, collapse: bool = True) -> SearchResponse:
        served, clock = self.served.get(index), StageClock()
        with clock.stage("encode"):
            query = self.combine(served, terms, strict_words)
        return self._respond(served, clock, f"compose->{target}", target, query, k, offset, cutoff,
                             exclude_ids or set(), rerank_top, collapse)

    def embed(self, text: str | None, image: QueryImage | None, index: str | None = None) -> tuple[Served, np.ndarray]:
        served = self.served.get(index)
        if (text is None) == (image is None):
            raise BadQuery("give exactly one of a text or an image")
        vector = self.text_vector(served, text).vector if text is not None else self.image_vector(served, image)
        return served, vector

    # --- vectors to results --------------------------------------------------------------------
    def _respond(self, served: Served, clock: StageClock, mode: str, target: str, query: QueryVector, k: int,
                 offset: int, cutoff: Cutoff, exclude: set[int] | None = None, rerank_top: int | None = None,
                 collapse: bool = True) -> SearchResponse:
        exclude = exclude or set()
        if cutoff.min_relevance is not None and served.loaded.calibration is None:
            raise BadQuery(f"index {served.name!r} has no relevance calibration (its gallery has no captions): "
                           "filter with min_score, the raw cosine, instead")
        collapsing = collapse and target == "caption"
        wanted = offset + k + len(exclude) + 8  # slack for rows deleted since the build
        if rerank_top:
            wanted = max(wanted, rerank_top)
        if collapsing:  # room for repeated texts; searching 100 costs about what 30 does
            wanted = max(4 * wanted, 100)
        while True:
            with clock.stage("search"):
                scores, ids, exhausted = self._search(served, target, query, wanted, rerank_top, cutoff)
            with clock.stage("metadata"):
                if collapsing:
                    hits = collapse_captions(self._hydrate_captions(ids, scores))
                else:
                    hits = self._hydrate_page(target, ids, scores, exclude, offset + k)
            if not collapsing or len(hits) >= offset + k or exhausted or wanted >= MAX_COLLAPSE_CANDIDATES:
                break
            wanted = min(4 * wanted, MAX_COLLAPSE_CANDIDATES)
        page = hits[offset:offset + k]
        if served.loaded.calibration is not None:
            for hit, relevance in zip(page, served.loaded.calibration.relevance([h.score for h in page]),
                                      strict=True):
                hit.relevance = round(float(relevance), 4)
        if self.observe_timings:
            self.observe_timings(mode, clock.ms)
        return SearchResponse(index=served.name, version=served.loaded.number,
                              encoder=served.encoder.name, mode=mode, k=k, offset=offset, results=page,
                              warnings=query.warnings, notes=query.notes, timings_ms=clock.rounded(),
                              query_attention=query.attention)

    def _search(self, served: Served, target: str, query: QueryVector, wanted: int, rerank_top: int | None,
                cutoff: Cutoff) -> tuple[np.ndarray, np.ndarray, bool]:
        """(scores, ids) of the `wanted` nearest, re-ranked and cut off; True when the index holds
        no more than that."""
        vector = query.vector
        scores, ids = served.loaded.search(target, vector[None, :], wanted, query_modality=query.modality)
        scores, ids = scores[0], ids[0]
        exhausted = len(ids) < wanted or bool((ids < 0).any())
        keep = ids >= 0
        scores, ids = scores[keep], ids[keep]
        if rerank_top and target == "image":
            scores, ids = self._rerank_by_centroid(served, vector, scores[:rerank_top], ids[:rerank_top])
        if cutoff.min_score is not None:
            above = scores >= cutoff.min_score
            scores, ids = scores[above], ids[above]
            exhausted = exhausted or not above.all()
        if cutoff.min_relevance is not None and served.loaded.calibration is not None:
            above = served.loaded.calibration.relevance(scores) >= cutoff.min_relevance
            scores, ids = scores[above], ids[above]
            exhausted = exhausted or not above.all()
        return scores, ids, exhausted

    @staticmethod
    def _rerank_by_centroid(served: Served, query: np.ndarray, scores: np.ndarray, ids: np.ndarray
                            ) -> tuple[np.ndarray, np.ndarray]:
        """Kiros et al.'s re-ranking: order the top N by similarity to their own centroid. The
        reported score stays the similarity to the query."""
        if len(ids) < 2:
            return scores, ids
        vectors = served.loaded.image_vectors(ids)
        centroid = normalise(vectors.mean(axis=0))
        order = np.argsort(-(vectors @ centroid), kind="stable")
        return scores[order], ids[order]

    def _hydrate_page(self, target: str, ids: np.ndarray, scores: np.ndarray, exclude: set[int],
                      count: int) -> list[ImageHit] | list[CaptionHit]:
        """Hits for the first `count` usable ids. Only about a page is read from the catalogue: ids
        excluded or deleted since the build are skipped and the next ones read in their place."""
        hits: list = []
        start = 0
        while len(hits) < count and start < len(ids):
            shortfall = count - len(hits) + (len(exclude) if start == 0 else 0)
            end = start + (shortfall if start == 0 else max(shortfall, 32))  # later rounds: few queries
            page_ids, page_scores = ids[start:end], scores[start:end]
            hits += self._hydrate_images(page_ids, page_scores, exclude) if target == "image" else \
                self._hydrate_captions(page_ids, page_scores)
            start = end
        return hits

    def _hydrate_images(self, ids: np.ndarray, scores: np.ndarray, exclude: set[int]) -> list[ImageHit]:
        with self.sessions() as session:
            rows = queries.images_by_id(session=session, image_ids=ids.tolist())
        return [ImageHit(id=int(i), path=rows[int(i)].path, thumbnail_url=thumbnail_url(int(i)), score=float(s),
                         captions=list(rows[int(i)].captions))
                for i, s in zip(ids, scores, strict=True) if int(i) in rows and int(i) not in exclude]

    def _hydrate_captions(self, ids: np.ndarray, scores: np.ndarray) -> list[CaptionHit]:
        with self.sessions() as session:
            captions = queries.captions_by_id(session=session, caption_ids=ids.tolist())
            images = queries.images_by_id(session=session, image_ids=[c.image_id for c in captions.values()])
        hits = []
        for caption_id, score in zip(ids, scores, strict=True):
            caption = captions.get(int(caption_id))
            if caption is None or caption.image_id not in images:
                continue
            image = images[caption.image_id]
            hits.append(CaptionHit(id=caption.id, text=caption.text, source=caption.source, score=float(score),
                                   image=ImageRef(id=image.id, path=image.path,
                                                  thumbnail_url=thumbnail_url(image.id))))
        return hits
