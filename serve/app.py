"""The one ASGI app ``autonas serve`` runs: the OpenAI-compatible model API (and, beside it, the web console).

The console (``/console``, :mod:`serve.console_pages`) reads the runs folder and needs the same key. Safe by
default: request bodies over :data:`MAX_BODY_BYTES` are refused before they are read into memory, every
``/v1`` route needs the API key when one is set (compared in constant time), and every error leaves as OpenAI's
error body with a 4xx/5xx status while the server keeps serving.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve.console_auth import key_given
from serve.console_pages import mount_console
from serve.engine import EngineOptions
from serve.openai_api import APIError, build_router
from serve.openai_schema import error_body
from serve.registry import ModelRegistry

MAX_BODY_BYTES = 1_000_000


@dataclass(frozen=True)
class ServeSettings:
    """Everything ``autonas serve`` decides before it starts listening."""

    runs_dir: Path | None = Path("runs")
    models: dict[str, Path] = field(default_factory=dict)
    api_key: str | None = None
    max_loaded_mb: float = 2048.0
    engine: EngineOptions = EngineOptions()


class BodyLimit:
    """Refuses a request body over ``limit`` bytes with 413, whether it declares its length or streams chunks."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _too_large(self.limit, send)
            return
        if declared is not None:  # a declared length within the limit: the server reads no more than that
            await self.app(scope, receive, send)
            return
        # a chunked body: read it here, up to the limit, and hand the app the same messages
        messages: list[Message] = []
        seen = 0
        while True:
            message = await receive()
            messages.append(message)
            seen += len(message.get("body", b""))
            if seen > self.limit:
                await _too_large(self.limit, send)
                return
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        replay = iter(messages)

        async def replayed() -> Message:
            return next(replay, None) or await receive()

        await self.app(scope, replayed, send)


async def _too_large(limit: int, send: Send) -> None:
    response = JSONResponse(
        error_body(f"the request body is over {limit} bytes", "invalid_request_error", "request_too_large"), 413
    )
    await response({"type": "http"}, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def _key_check(api_key: str | None):  # noqa: ANN202 - a FastAPI dependency
    """The bearer key, or the console's session cookie (the playground's requests carry that, never the key)."""

    async def check(request: Request) -> None:
        if not key_given(request, api_key):
            raise APIError(401, "a valid API key is needed (Authorization: Bearer ...)", "authentication_error")

    return check


def create_app(settings: ServeSettings) -> FastAPI:
    registry = ModelRegistry(settings.runs_dir, settings.models, settings.max_loaded_mb, settings.engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        registry.close()

    app = FastAPI(title="AutoNAS-CodeLM", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.registry = registry
    app.include_router(build_router(registry), dependencies=[Depends(_key_check(settings.api_key))])
    mount_console(app, settings.runs_dir, settings.api_key, registry)

    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError) -> JSONResponse:
        return err.response()

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"{where}: {first.get('msg', 'invalid request')}" if where else str(first.get("msg", "invalid"))
        return JSONResponse(error_body(message, "invalid_request_error", param=where or None), 400)

    app.add_middleware(BodyLimit)
    return app
