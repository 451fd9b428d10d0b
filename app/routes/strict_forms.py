"""Multipart form fields must be UTF-8. Starlette decodes a field that is not as Latin-1 instead,
silently ("\\xff\\xfeblue" becomes "ÿþblue"), so a client's encoding bug would come back as an
"unknown word" or a search for the wrong text. Routes of these routers parse the form with a
parser that refuses such a field, naming it, before FastAPI reads the form."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute
from python_multipart.multipart import parse_options_header
from starlette.formparsers import MultiPartException, MultiPartParser


class Utf8MultiPartParser(MultiPartParser):
    def on_part_end(self) -> None:
        if self._current_part.file is None:
            try:
                bytes(self._current_part.data).decode("utf-8")
            except UnicodeDecodeError as error:
                raise MultiPartException(f"form field {self._current_part.field_name!r} is not valid UTF-8 "
                                         f"(byte {error.start})") from error
        super().on_part_end()


class Utf8FormRoute(APIRoute):
    """An APIRoute whose multipart form, if any, is parsed by `Utf8MultiPartParser` (the parsed form
    is kept on the request, where Starlette's `request.form()` finds it)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def parse_strictly_then_handle(request: Request) -> Response:
            content_type, _ = parse_options_header(request.headers.get("content-type", ""))
            if content_type == b"multipart/form-data":
                try:
                    request._form = await Utf8MultiPartParser(request.headers, request.stream()).parse()
                except MultiPartException as error:
                    raise HTTPException(400, error.message) from error
            return await handler(request)

        return parse_strictly_then_handle
