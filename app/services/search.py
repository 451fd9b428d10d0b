"""The search service: queries become vectors, vectors become ranked, hydrated results.

Every query is reduced to one L2-normalised vector (a text, an image, or a weighted sum of
several: image - word + word is the common case, after Kiros et al. 2014), searched in the image
or the caption index of one served encoder, then joined with the catalogue.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TypeVar
from urllib.parse import urlencode

import anyio
import numpy as np
from PIL import Image
from sqlalchemy.orm import Session, sessionmaker

from app.schemas import CaptionHit, ImageHit, ImageRef, SearchResponse
from app.services import catalogue_queries as queries
from app.services.errors import BadQuery, NotFound, UnknownWords
from app.services.images import open_gallery_image
from app.services.served import Served, ServedIndexes
from app.services.timing import StageClock

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

    def text_vector(self, served: Served, text: str, strict_words: bool = False) -> tuple[np.ndarray, list[str]]:
        """The text's vector, and a warning naming unknown words (or, with `strict_words`, UnknownWords)."""
        unknown = served.encoder.unknown_words(text)
        if unknown and strict_words:
            raise UnknownWords(unknown)
        text = self.check_text(text)
        warnings = [f"unknown word(s) ignored by {served.encoder.name}: {', '.join(unknown)}"] if unknown else []
        return served.encoder.encode_text([text])[0].cpu().numpy(), warnings

    def image_vector(self, served: Served, query: QueryImage) -> np.ndarray:
        if query.image is not None:
            return served.encoder.encode_image([query.image])[0].cpu().numpy()
        if query.image_id is None:
            raise BadQuery("give an image: an upload or a gallery image id")
        vector = served.version.image_vector(query.image_id)
        if vector is None:
            raise NotFound(f"image {query.image_id} is not in index {served.name!r}")
        return vector

    def combine(self, served: Served, terms: list[WeightedTerm], strict_words: bool) -> tuple[np.ndarray, list[str]]:
        """sum_i w_i * v_i over the terms' normalised vectors, re-normalised."""
        total = np.zeros(served.encoder.embed_dim, np.float32)
        warnings: list[str] = []
        for term in terms:
            if term.text is not None:
                vector, notes = self.text_vector(served, term.text, strict_words)
                warnings += notes
            elif term.image is not None:
                vector = self.image_vector(served, term.image)
            else:
                raise BadQuery("each term needs a text, an image id or an upload")
            total += term.weight * vector
        return normalise(total), warnings

    # --- the modes -----------------------------------------------------------------------------
    def text_to(self, target: str, text: str, k: int, offset: int = 0, min_score: float | None = None,
                index: str | None = None) -> SearchResponse:
        served, clock = self.served.get(index), StageClock()
        with clock.stage("encode"):
            vector, warnings = self.text_vector(served, text)
        response = self._respond(served, clock, f"text->{target}", target, vector, k, offset, min_score, warnings)
        if target == "image" and served.encoder.imagines_texts:
            # A link, not the picture: the page fetches it beside the results, a client that
            # does not want it pays nothing. The version makes it a new URL (not a stale cached
            # picture) once a new model is published under the same index name.
            query = urlencode({"q": self.check_text(text), "index": served.name,
                               "version": served.version.version.version})
            response.imagined_image_url = f"/api/imagine?{query}"
        return response

    def image_to(self, target: str, query: QueryImage, k: int, offset: int = 0, min_score: float | None = None,
                 index: str | None = None) -> SearchResponse:
        served, clock = self.served.get(index), StageClock()
        with clock.stage("encode"):
            vector = self.image_vector(served, query)
        generated, warnings = None, []
        if target == "caption" and served.encoder.describes_images:
            with clock.stage("describe"):
                try:
                    generated = served.encoder.describe([self.query_pixels(query)])[0]
                except NotFound as error:  # the file is gone, its vector is not: still answer
                    warnings.append(f"no generated caption: {error.message}")
        exclude = {query.image_id} if query.image_id is not None and target == "image" else set()
        response = self._respond(served, clock, f"image->{target}", target, vector, k, offset, min_score, warnings,
                                 exclude)
        response.generated_caption = generated
        return response

    def imagine_png(self, text: str, index: str | None = None, seed: int = 0,
                    version: int | None = None) -> tuple[bytes, bool]:
        """The serving encoder's imagined image for `text` as PNG bytes, and whether it may be cached:
        not when the link was made for another `version` (the picture is the served model's)."""
        served = self.served.get(index)
        cacheable = version is None or version == served.version.version.version
        if not served.encoder.imagines_texts:
            raise NotFound(f"index {served.name!r} serves encoder {served.encoder.name!r}, which has no image "
                           "generator (only GXN encoders trained with the imagine branch have one)")
        pixels = served.encoder.imagine([self.check_text(text)], seed=seed)[0]
        buffer = io.BytesIO()
        Image.fromarray(pixels.permute(1, 2, 0).numpy(), "RGB").save(buffer, "PNG")
        return buffer.getvalue(), cacheable

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
                   min_score: float | None = None, minus_weight: float = 1.0, plus_weight: float = 1.0,
                   rerank_top: int | None = None, index: str | None = None) -> SearchResponse:
        """image - sum(minus words) + sum(plus words), normalised; words the encoder does not know
        are refused (422 naming them): silently dropping one would answer a different question."""
        terms = [WeightedTerm(1.0, image=query)]
        terms += [WeightedTerm(-minus_weight, text=w) for w in minus]
        terms += [WeightedTerm(plus_weight, text=w) for w in plus]
        return self.compose(terms, "image", k, offset, min_score, rerank_top, index, strict_words=True,
                            exclude_ids={query.image_id} if query.image_id is not None else set())

    def compose(self, terms: list[WeightedTerm], target: str, k: int, offset: int = 0,
                min_score: float | None = None, rerank_top: int | None = None, index: str | None = None,
                strict_words: bool = False, exclude_ids: set[int] | None = None) -> SearchResponse:
        served, clock = self.served.get(index), StageClock()
        with clock.stage("encode"):
            vector, warnings = self.combine(served, terms, strict_words)
        return self._respond(served, clock, f"compose->{target}", target, vector, k, offset, min_score, warnings,
                             exclude_ids or set(), rerank_top)

    def embed(self, text: str | None, image: QueryImage | None, index: str | None = None) -> tuple[Served, np.ndarray]:
        served = self.served.get(index)
        if (text is None) == (image is None):
            raise BadQuery("give exactly one of a text or an image")
        vector = self.text_vector(served, text)[0] if text is not None else self.image_vector(served, image)
        return served, vector

    # --- vectors to results --------------------------------------------------------------------
    def _respond(self, served: Served, clock: StageClock, mode: str, target: str, vector: np.ndarray, k: int,
                 offset: int, min_score: float | None, warnings: list[str], exclude: set[int] | None = None,
                 rerank_top: int | None = None) -> SearchResponse:
        wanted = offset + k + len(exclude or ()) + 8  # slack for rows deleted since the build
        if rerank_top:
            wanted = max(wanted, rerank_top)
        with clock.stage("search"):
            scores, ids = served.version.search(target, vector[None, :], wanted)
            scores, ids = scores[0], ids[0]
            keep = ids >= 0
            scores, ids = scores[keep], ids[keep]
            if rerank_top and target == "image":
                scores, ids = self._rerank_by_centroid(served, vector, scores[:rerank_top], ids[:rerank_top])
        if min_score is not None:
            above = scores >= min_score
            scores, ids = scores[above], ids[above]
        with clock.stage("metadata"):
            hits = self._hydrate_page(target, ids, scores, exclude or set(), offset + k)
        if self.observe_timings:
            self.observe_timings(mode, clock.ms)
        return SearchResponse(index=served.name, version=served.version.version.version,
                              encoder=served.encoder.name, mode=mode, k=k, offset=offset,
                              results=hits[offset:offset + k], warnings=warnings, timings_ms=clock.rounded())

    @staticmethod
    def _rerank_by_centroid(served: Served, query: np.ndarray, scores: np.ndarray, ids: np.ndarray
                            ) -> tuple[np.ndarray, np.ndarray]:
        """Kiros et al.'s re-ranking: order the top N by similarity to their own centroid. The
        reported score stays the similarity to the query."""
        if len(ids) < 2:
            return scores, ids
        vectors = served.version.image_vectors(ids)
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
