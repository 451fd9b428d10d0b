"""The REST API, versioned under /api/. Routes parse and validate; the search service works."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, HTTPException, Path, Query, Request, Response, UploadFile
from pydantic import ValidationError

from app.deps import SearchDep, ServedDep, SettingsDep
from app.routes.strict_forms import Utf8FormRoute
from app.schemas import (
    MAX_K,
    MAX_OFFSET,
    ComposeQuery,
    EmbedResponse,
    ImageDetail,
    IndexStats,
    SearchResponse,
    Stats,
    error_responses,
)
from app.services.errors import BadQuery, NotFound
from app.services.images import decode_upload
from app.services.search import Cutoff, QueryImage, WeightedTerm, thumbnail_url
from indexer import catalogue_reads as queries

router = APIRouter(prefix="/api", tags=["search"], route_class=Utf8FormRoute,
                   responses=error_responses(400, 404, 413, 415, 422, 503))


def as_json(response: SearchResponse) -> Response:
    """Serialised once, by pydantic (fields that are None, e.g. a generated caption from an encoder
    without a decoder, are left out): a returned model would be dumped, validated against
    `response_model` and encoded again by FastAPI, a millisecond of a few-millisecond search."""
    return Response(response.model_dump_json(exclude_none=True), media_type="application/json")

K = Annotated[int, Query(ge=1, le=MAX_K, description="results per page")]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="results to skip (paging)")]
MIN_SCORE_HELP = "drop results whose raw cosine similarity is below this"
MIN_RELEVANCE_HELP = "drop results whose relevance (the calibrated score, 0-1) is below this"
COLLAPSE_HELP = "captions: identical texts as one result, with their count and images"
ATTENTION_HELP = "also return where the encoder looked in the query (DAN encoders: word or region weights)"
MinScore = Annotated[float | None, Query(ge=-1, le=1, description=MIN_SCORE_HELP)]
MinRelevance = Annotated[float | None, Query(ge=0, le=1, description=MIN_RELEVANCE_HELP)]
Collapse = Annotated[bool, Query(description=COLLAPSE_HELP)]
Attention = Annotated[bool, Query(description=ATTENTION_HELP)]
IndexName = Annotated[str | None, Query(description="which served index/encoder (default: the configured one)")]
Target = Literal["image", "caption"]
ImageId = Annotated[int, Query(ge=1, le=2**62, description="a gallery image id")]
ImagePath = Annotated[int, Path(ge=1, le=2**62, description="a gallery image id")]


async def read_query_image(upload: UploadFile | None, image_id: int | None, max_bytes: int) -> QueryImage:
    if (upload is None) == (image_id is None):
        raise BadQuery("give exactly one of an uploaded file ('file') or a gallery 'image_id'")
    if upload is not None:
        return QueryImage(image=decode_upload(await upload.read(max_bytes + 1), max_bytes))
    return QueryImage(image_id=image_id)


@router.get("/search/text", response_model=SearchResponse, summary="Text -> images (or captions)")
async def search_text(search: SearchDep, q: Annotated[str, Query(description="the query text")], k: K = 10,
                      offset: Offset = 0, min_score: MinScore = None, min_relevance: MinRelevance = None,
                      index: IndexName = None, target: Target = "image", attention: Attention = False) -> Response:
    cutoff = Cutoff(min_score, min_relevance)
    return as_json(await search.run(search.text_to, target, q, k, offset, cutoff, index, attention))


@router.get("/search/image", response_model=SearchResponse, summary="Gallery image -> captions (or images)")
async def search_image_by_id(search: SearchDep, image_id: ImageId, k: K = 10, offset: Offset = 0,
                             min_score: MinScore = None, min_relevance: MinRelevance = None,
                             index: IndexName = None, target: Target = "caption", collapse: Collapse = True,
                             attention: Attention = False) -> Response:
    query, cutoff = QueryImage(image_id=image_id), Cutoff(min_score, min_relevance)
    return as_json(await search.run(search.image_to, target, query, k, offset, cutoff, index, collapse, attention))


@router.post("/search/image", response_model=SearchResponse, summary="Uploaded image -> captions (or images)")
async def search_image_upload(search: SearchDep, settings: SettingsDep,
                              file: Annotated[UploadFile | None, File()] = None,
                              image_id: Annotated[int | None, Form(ge=1, le=2**62)] = None,
                              k: Annotated[int, Form(ge=1, le=MAX_K)] = 10,
                              offset: Annotated[int, Form(ge=0, le=MAX_OFFSET)] = 0,
                              min_score: Annotated[float | None, Form(ge=-1, le=1, description=MIN_SCORE_HELP)] = None,
                              min_relevance: Annotated[float | None, Form(ge=0, le=1,
                                                                          description=MIN_RELEVANCE_HELP)] = None,
                              index: Annotated[str | None, Form()] = None,
                              target: Annotated[Target, Form()] = "caption",
                              collapse: Annotated[bool, Form(description=COLLAPSE_HELP)] = True,
                              attention: Annotated[bool, Form(description=ATTENTION_HELP)] = False) -> Response:
    query = await read_query_image(file, image_id, settings.max_upload_bytes)
    cutoff = Cutoff(min_score, min_relevance)
    return as_json(await search.run(search.image_to, target, query, k, offset, cutoff, index, collapse, attention))


@router.get("/search/arithmetic", response_model=SearchResponse, summary="Gallery image - words + words -> images")
async def arithmetic_by_id(search: SearchDep, image_id: ImageId, minus: Annotated[list[str], Query()] = (),
                           plus: Annotated[list[str], Query()] = (),
                           minus_weight: Annotated[float, Query(gt=0, le=10)] = 1,
                           plus_weight: Annotated[float, Query(gt=0, le=10)] = 1,
                           rerank_top: Annotated[int | None, Query(ge=2, le=1000)] = None, k: K = 10,
                           offset: Offset = 0, min_score: MinScore = None, min_relevance: MinRelevance = None,
                           index: IndexName = None) -> Response:
    return as_json(await search.run(search.arithmetic, QueryImage(image_id=image_id), list(minus), list(plus), k,
                                    offset, Cutoff(min_score, min_relevance), minus_weight, plus_weight,
                                    rerank_top, index))


@router.post("/search/arithmetic", response_model=SearchResponse, summary="Image (upload or id) - words + words")
async def arithmetic_upload(search: SearchDep, settings: SettingsDep,
                            file: Annotated[UploadFile | None, File()] = None,
                            image_id: Annotated[int | None, Form(ge=1, le=2**62)] = None,
                            minus: Annotated[list[str], Form()] = (), plus: Annotated[list[str], Form()] = (),
                            minus_weight: Annotated[float, Form(gt=0, le=10)] = 1,
                            plus_weight: Annotated[float, Form(gt=0, le=10)] = 1,
                            rerank_top: Annotated[int | None, Form(ge=2, le=1000)] = None,
                            k: Annotated[int, Form(ge=1, le=MAX_K)] = 10,
                            offset: Annotated[int, Form(ge=0, le=MAX_OFFSET)] = 0,
                            min_score: Annotated[float | None, Form(ge=-1, le=1, description=MIN_SCORE_HELP)] = None,
                            min_relevance: Annotated[float | None, Form(ge=0, le=1,
                                                                        description=MIN_RELEVANCE_HELP)] = None,
                            index: Annotated[str | None, Form()] = None) -> Response:
    query = await read_query_image(file, image_id, settings.max_upload_bytes)
    return as_json(await search.run(search.arithmetic, query, list(minus), list(plus), k, offset,
                                    Cutoff(min_score, min_relevance), minus_weight, plus_weight, rerank_top, index))


COMPOSE_FIELDS = {"query", "files"}


@router.post("/search/compose", response_model=SearchResponse,
             summary="Weighted query algebra: texts, gallery images and uploads, each with a signed weight")
async def compose(request: Request, search: SearchDep, settings: SettingsDep,
                  query: Annotated[str, Form(description="a ComposeQuery as JSON (k, offset, ... go in it)")],
                  files: Annotated[list[UploadFile], File()] = ()) -> Response:
    stray = sorted(set((await request.form()).keys()) - COMPOSE_FIELDS)
    if stray:  # e.g. k sent as a form field: ignoring it would answer with another k than asked
        raise HTTPException(422, f"unknown form field(s) {', '.join(stray)}: this endpoint takes 'query' (JSON, "
                                 "holding k, offset, target and the rest) and 'files'")
    try:
        parsed = ComposeQuery.model_validate_json(query)
    except ValidationError as error:
        raise HTTPException(422, f"invalid query: {error.errors()[0]['msg']} at "
                                 f"{'.'.join(map(str, error.errors()[0]['loc']))}") from error
    images = [QueryImage(image=decode_upload(await f.read(settings.max_upload_bytes + 1),
                                             settings.max_upload_bytes)) for f in files]
    terms = []
    for term in parsed.terms:
        if sum(x is not None for x in (term.text, term.image_id, term.upload)) != 1:
            raise BadQuery("each term needs exactly one of 'text', 'image_id' or 'upload'")
        if term.upload is not None and term.upload >= len(images):
            raise BadQuery(f"term refers to upload {term.upload}, but {len(images)} file(s) were sent")
        image = images[term.upload] if term.upload is not None else (
            QueryImage(image_id=term.image_id) if term.image_id is not None else None)
        terms.append(WeightedTerm(term.weight, text=term.text, image=image))
    cutoff = Cutoff(parsed.min_score, parsed.min_relevance)
    return as_json(await search.run(search.compose, terms, parsed.target, parsed.k, parsed.offset, cutoff,
                                    parsed.rerank_top, parsed.index, strict_words=True, collapse=parsed.collapse))


@router.get("/imagine", summary="What the serving encoder imagines for a text (PNG; GXN encoders only)",
            response_class=Response, responses={200: {"content": {"image/png": {}}}})
async def imagine(search: SearchDep, q: Annotated[str, Query(description="the text to imagine")],
                  index: IndexName = None,
                  seed: Annotated[int, Query(ge=0, le=2**31 - 1, description="the noise seed")] = 0,
                  version: Annotated[int | None, Query(ge=1, description="the index version the link was made "
                                                                        "for: a cache key")] = None
                  ) -> Response:
    png, cacheable = await search.run(search.imagine_png, q, index, seed, version)
    cache = "public, max-age=3600" if cacheable else "no-store"  # an old link gets today's model's picture
    return Response(png, media_type="image/png", headers={"Cache-Control": cache})


@router.post("/embed", response_model=EmbedResponse, summary="The normalised embedding of a text or an image")
async def embed(search: SearchDep, settings: SettingsDep, text: Annotated[str | None, Form()] = None,
                file: Annotated[UploadFile | None, File()] = None,
                index: Annotated[str | None, Form()] = None) -> EmbedResponse:
    image = await read_query_image(file, None, settings.max_upload_bytes) if file is not None else None
    served, vector = await search.run(search.embed, text, image, index)
    return EmbedResponse(index=served.name, encoder=served.encoder.name, dim=len(vector),
                         embedding=[round(float(x), 7) for x in vector])


@router.get("/images/{image_id}", response_model=ImageDetail, tags=["gallery"])
def image_detail(image_id: ImagePath, search: SearchDep) -> ImageDetail:
    with search.sessions() as session:
        info = queries.image_by_id(session=session, image_id=image_id)
    if info is None:
        raise NotFound(f"no image with id {image_id}")
    return ImageDetail(id=info.id, path=info.path, thumbnail_url=thumbnail_url(info.id), width=info.width,
                       height=info.height, content_hash=info.content_hash, captions=list(info.captions))


@router.get("/health", tags=["service"])
def health(served: ServedDep) -> dict:
    return {"status": "ok", "indexes": served.names}


@router.get("/stats", response_model=Stats, tags=["service"])
def stats(served: ServedDep, settings: SettingsDep) -> Stats:
    described = []
    for name in served.discover():
        current = served.get(name)
        m = current.loaded.manifest
        described.append(IndexStats(name=name, version=m["version"], encoder=m["encoder_name"],
                                    checkpoint_hash=m["checkpoint_hash"], images=m["image_count"],
                                    captions=m["caption_count"], image_index=m["image_index"]["factory"],
                                    caption_index=m["caption_index"]["factory"], built_at=m["built_at"]))
    return Stats(default_index=served.default_name, device=settings.device, indexes=described)

