"""Admin endpoints (bearer token): trigger a reindex, reload index versions, read build status."""

from __future__ import annotations

import threading
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request

from app.deps import AdminDep, ServedDep, SettingsDep
from app.schemas import error_responses
from indexer import build
from indexer.status import index_names, index_status

router = APIRouter(prefix="/api/admin", tags=["admin"], dependencies=[AdminDep],
                   responses=error_responses(401, 403, 404, 409, 422))


@router.post("/reindex", status_code=202, summary="Start an incremental (or full) reindex in the background")
def reindex(request: Request, settings: SettingsDep, name: Annotated[str | None, Query()] = None,
            full: bool = False) -> dict:
    sessions = request.app.state.sessions
    known = index_names(request.app.state.store, sessions)
    if name is not None and name not in known:
        raise HTTPException(404, f"unknown index {name!r}; known: {', '.join(known) or 'none'}")
    names = [name] if name else known
    jobs = request.app.state.admin_jobs
    running = [each for each in names if jobs.get(each) == "running"]
    if running:
        raise HTTPException(409, f"a reindex of {', '.join(running)} is already running")

    def run() -> None:
        for each in names:
            try:
                # workers=0: no forked decoder processes inside the (multi-threaded) server
                options = build.BuildOptions(progress=False, device=settings.device, workers=0)
                report = build.reindex(each, index_dir=settings.index_dir, sessions=sessions, full=full,
                                       options=options, vector_store=request.app.state.store).summary()
            except Exception as error:  # reported through /status; the server keeps serving
                jobs[each] = f"failed: {type(error).__name__}: {error}"
                continue
            try:
                request.app.state.served.reload_all()  # serve the new version as soon as the job is done
                jobs[each] = report
            except Exception as error:  # the build stands; the next request's reload retries
                jobs[each] = f"{report} (not yet serving: {type(error).__name__}: {error})"

    for each in names:
        jobs[each] = "running"
    threading.Thread(target=run, name="admin-reindex", daemon=True).start()
    return {"started": names}


@router.post("/reload", summary="Load the current version of every index now")
def reload(served: ServedDep) -> dict:
    return {"versions": served.reload_all()}


@router.get("/status", summary="Versions, counts and builds (running or failed) of every index")
def status(request: Request) -> dict:
    sessions, store = request.app.state.sessions, request.app.state.store
    return {"indexes": [index_status(store, sessions, name).describe() for name in index_names(store, sessions)],
            "jobs": dict(request.app.state.admin_jobs)}
