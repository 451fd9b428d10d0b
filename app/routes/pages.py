"""The browser search page. Text search (and id-based image and arithmetic queries) render on
the server, so the page works without JavaScript; static/app.js adds uploads, paging and more."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from app.deps import SearchDep, ServedDep
from app.schemas import QueryAttention
from app.services.errors import ServiceError
from app.services.search import QueryImage

router = APIRouter(include_in_schema=False)
ROOT = Path(__file__).resolve().parent.parent.parent
templates = Jinja2Templates(directory=ROOT / "templates")
MODES = ("text", "image", "arith")


@router.get("/", response_class=HTMLResponse)
async def search_page(request: Request, search: SearchDep, served: ServedDep,
                mode: Annotated[str, Query()] = "text", q: str = "", id: str = "",
                minus: Annotated[list[str], Query()] = (), plus: Annotated[list[str], Query()] = (),
                k: str = "24", index: str | None = None) -> HTMLResponse:
    # Parsed by hand: a form submitted without JavaScript may send id= or k=abc, and the page should
    # say so in HTML rather than answer with the API's JSON 422.
    mode = mode if mode in MODES else "text"
    id = int(id) if id.strip().isdigit() and 0 < int(id) <= 2**62 else None  # noqa: A001
    k = min(max(int(k), 1), 100) if k.strip().isdigit() else 24
    about = await run_in_threadpool(_about, served, index)  # may load an index: not on the event loop
    context = {"mode": mode, "q": q, "id": id, "minus": list(minus), "plus": list(plus), "k": k,
               "index": index, "response": None, "error": None, "about": about}
    attention = bool(about.get("attends"))  # an attending encoder's page shows where it looked
    try:
        if mode == "text" and q.strip():
            context["response"] = await search.run(search.text_to, "image", q, k, index=index, attention=attention)
        elif mode == "image" and id is not None:
            context["response"] = await search.run(search.image_to, "caption", QueryImage(image_id=id), k,
                                                   index=index, attention=attention)
        elif mode == "arith" and id is not None and (minus or plus):
            context["response"] = await search.run(search.arithmetic, QueryImage(image_id=id), list(minus),
                                                   list(plus), k, index=index)
    except ServiceError as error:
        context["error"] = error.message
        return templates.TemplateResponse(request, "index.html", context, status_code=error.status_code)
    if context["response"] is not None:
        context["looked"] = attention_view(context["response"].query_attention)
    return templates.TemplateResponse(request, "index.html", context)


def attention_view(attention: QueryAttention | None) -> dict | None:
    """What the page draws (as static/app.js does): the steps' mean weight of each word or region,
    and its share of the largest (bold words, the heat of a cell)."""
    if attention is None:
        return None
    if attention.words is not None:
        means = [sum(column) / len(column) for column in zip(*attention.word_weights, strict=True)]
        top = max(means, default=0) or 1.0
        return {"words": [{"word": w, "weight": m, "share": m / top} for w, m in zip(attention.words, means,
                                                                                   strict=True)]}
    steps = attention.region_weights or []
    if not steps:
        return None
    rows = [[sum(step[r][c] for step in steps) / len(steps) for c in range(len(steps[0][0]))]
            for r in range(len(steps[0]))]
    top = max(max(row) for row in rows) or 1.0
    return {"rows": len(rows), "cols": len(rows[0]), "cells": [cell / top for row in rows for cell in row]}


@router.get("/favicon.ico")
def favicon() -> FileResponse:
    """Browsers ask for /favicon.ico whatever the page links to; answer with the page's icon."""
    return FileResponse(ROOT / "static" / "favicon.svg", media_type="image/svg+xml",
                        headers={"Cache-Control": "public, max-age=86400"})


def _about(served, index: str | None = None) -> dict:
    """The footer's facts about the served index, and whether its encoder attends (DAN)."""
    try:
        current = served.get(index)
    except ServiceError as error:
        return {"error": error.message}
    manifest = current.loaded.manifest
    return {"index": current.name, "version": manifest["version"], "encoder": manifest["encoder_name"],
            "images": manifest["image_count"], "captions": manifest["caption_count"],
            "built_at": manifest["built_at"][:19].replace("T", " "), "served": served.names,
            "attends": current.encoder.attends}
