"""Request and response bodies of the REST API (OpenAPI documents them)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_K = 100
MAX_OFFSET = 1000


class ErrorBody(BaseModel):
    """Every 4xx and 5xx answer of the API: one sentence naming the problem, plus details by kind."""

    detail: str = Field(description="what was wrong, naming the parameter or value")
    errors: list[dict] | None = Field(None, description="request validation: each problem with its location "
                                                        "(loc), message (msg) and type")
    unknown_words: list[str] | None = Field(None, description="arithmetic and compose: the words the encoder "
                                                              "does not know")


def error_responses(*codes: int) -> dict[int | str, dict]:
    """OpenAPI `responses` declaring ErrorBody for these status codes (they replace FastAPI's default
    422 schema, whose `detail` is a list: clients generated from it would fail on our bodies)."""
    meaning = {400: "bad query", 401: "missing token", 403: "wrong token or admin disabled", 404: "not found",
               409: "already running", 413: "upload too large", 415: "not an image",
               422: "invalid parameter or unknown word", 503: "no index yet or encoder unavailable"}
    return {code: {"model": ErrorBody, "description": meaning[code]} for code in codes}


class ImageRef(BaseModel):
    id: int
    path: str
    thumbnail_url: str


RELEVANCE = ("how likely the hit matches the query, 0-1: the score calibrated on the gallery's own "
             "caption-image pairs when the index was built (absent for a gallery without captions)")


class ImageHit(ImageRef):
    score: float = Field(description="cosine similarity to the query (inner product of unit vectors)")
    relevance: float | None = Field(None, description=RELEVANCE)
    captions: list[str]


class CaptionHit(BaseModel):
    id: int = Field(description="the best-scoring caption with this text")
    text: str
    source: str
    score: float = Field(description="cosine similarity to the query (inner product of unit vectors)")
    relevance: float | None = Field(None, description=RELEVANCE)
    image: ImageRef = Field(description="the image of the best-scoring caption with this text")
    count: int = Field(1, description="how many of the captions found for the query have this text "
                                      "(identical texts are one result unless collapse=false)")
    images: list[ImageRef] = Field(default_factory=list, description="the images those captions describe, "
                                                                     "best first (at most 10)")


class QueryAttention(BaseModel):
    """Where an attending encoder (DAN) looked in the query: one entry per attention step, each
    summing to one. A text query gives its words and weights; an image query its region grid."""

    words: list[str] | None = Field(None, description="the query's words as the encoder read them")
    word_weights: list[list[float]] | None = Field(None, description="per step, one weight per word")
    region_weights: list[list[list[float]]] | None = Field(
        None, description="per step, a rows x columns grid over the query image (7 x 7 for EfficientNet-Lite)")


class SearchResponse(BaseModel):
    index: str = Field(description="the index (and so the encoder) that answered")
    version: int
    encoder: str
    mode: str
    k: int
    offset: int
    results: list[ImageHit] | list[CaptionHit]
    warnings: list[str] = Field(default_factory=list, description="e.g. query words the encoder does not know")
    notes: list[str] = Field(default_factory=list, description="how the query was read, e.g. a plural as its "
                                                               "singular or 'grey' as 'gray'")
    timings_ms: dict[str, float] = Field(default_factory=dict,
                                         description="server time per stage: encode, search, metadata "
                                                     "(and describe, for a generated caption)")
    generated_caption: str | None = Field(None, description="image->caption with an encoder that generates "
                                                            "captions (GXN): its caption for the query image")
    imagined_image_url: str | None = Field(None, description="text->image with an encoder that imagines images "
                                                             "(GXN): a PNG of what it imagined for the query text")
    query_attention: QueryAttention | None = Field(None, description="with attention=true and an encoder that "
                                                                     "attends (DAN): where it looked in the query")


class Term(BaseModel):
    """One term of a query: a text, a gallery image id, or the i-th uploaded file; with a weight
    (negative to subtract)."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = None
    image_id: int | None = Field(None, ge=1, le=2**62)
    upload: int | None = Field(None, ge=0, description="index into the uploaded files (multipart)")
    weight: float = Field(1.0, ge=-10, le=10)


class ComposeQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt or misplaced field is an error, not ignored

    terms: list[Term] = Field(min_length=1, max_length=16)
    target: Literal["image", "caption"] = "image"
    k: int = Field(10, ge=1, le=MAX_K)
    offset: int = Field(0, ge=0, le=MAX_OFFSET)
    min_score: float | None = Field(None, ge=-1, le=1, description="drop results whose raw cosine is below this")
    min_relevance: float | None = Field(None, ge=0, le=1, description="drop results whose relevance is below this")
    rerank_top: int | None = Field(None, ge=2, le=1000)
    index: str | None = None
    collapse: bool = Field(True, description="captions: identical texts as one result")


class EmbedResponse(BaseModel):
    index: str
    encoder: str
    dim: int
    embedding: list[float]


class ImageDetail(ImageRef):
    width: int
    height: int
    content_hash: str
    captions: list[str]


class IndexStats(BaseModel):
    name: str
    version: int
    encoder: str
    checkpoint_hash: str
    images: int
    captions: int
    image_index: str
    caption_index: str
    built_at: str


class Stats(BaseModel):
    default_index: str | None
    device: str
    indexes: list[IndexStats]
