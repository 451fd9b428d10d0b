"""FastAPI dependencies: the app state's services, and the admin token check."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request

from app.services.search import SearchService
from app.services.served import ServedIndexes
from app.settings import Settings


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_search(request: Request) -> SearchService:
    return request.app.state.search


def get_served(request: Request) -> ServedIndexes:
    return request.app.state.served


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
SearchDep = Annotated[SearchService, Depends(get_search)]
ServedDep = Annotated[ServedIndexes, Depends(get_served)]


def require_admin(settings: SettingsDep, authorization: Annotated[str | None, Header()] = None) -> None:
    """Bearer token from settings, compared in constant time; no configured token disables admin."""
    if not settings.admin_token:
        raise HTTPException(403, "admin endpoints are disabled: set ADMIN_TOKEN to enable them")
    if not authorization or not authorization.lower().startswith("bearer "):
        raise HTTPException(401, "admin endpoints need an 'Authorization: Bearer <token>' header",
                            headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(authorization[7:].strip().encode(), settings.admin_token.encode()):
        raise HTTPException(403, "wrong admin token")


AdminDep = Depends(require_admin)
