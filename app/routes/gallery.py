"""Thumbnails and metrics: the non-JSON endpoints."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import FileResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.deps import SearchDep
from app.schemas import error_responses
from app.services.errors import NotFound
from indexer import catalogue_reads as queries

router = APIRouter(tags=["gallery"], responses=error_responses(404, 422, 503))


@router.get("/images/{image_id}/thumb", summary="A cached JPEG thumbnail of a gallery image")
def thumbnail(image_id: Annotated[int, Path(ge=1, le=2**62)], request: Request, search: SearchDep) -> FileResponse:
    # The id is an integer looked up in the catalogue: no part of the URL ever becomes a file path.
    with search.sessions() as session:
        info = queries.image_by_id(session=session, image_id=image_id)
    if info is None:
        raise NotFound(f"no image with id {image_id}")
    path = request.app.state.thumbnails.path_for(info.id, info.content_hash, info.file_path)
    return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=86400"})


@router.get("/metrics", tags=["service"], summary="Prometheus metrics")
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
