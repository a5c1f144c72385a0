"""The ASGI application: routers are mounted here, each in its own module."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis
from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse, Response
from fastapi.routing import APIRoute, iter_route_contexts
from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp

from dispatch import store
from dispatch.api import (
    campaigns,
    pages,
    preference_choices,
    providers,
    suppressions,
    unsubscribe_tokens,
)
from dispatch.api.body_limits import MAX_API_BODY_BYTES, STREAMED, JsonBodyTooLarge
from dispatch.api.callbacks import router as callbacks_router
from dispatch.api.errors import (
    HEALTH_RESPONSES,
    complete_document,
    install_error_handlers,
    too_large_response,
)
from dispatch.api.methods import HeadAsGet
from dispatch.api.provider_schemas import add_provider_schemas
from dispatch.metrics import RedisStateCollector

log = logging.getLogger(__name__)
_SERVICE_METRICS = CollectorRegistry(auto_describe=False)
_SERVICE_METRICS.register(RedisStateCollector())


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    try:
        problems = await run_in_threadpool(store.redis_problems, store.sync_client())
    except redis.RedisError:  # /healthz says so; the API starts anyway
        problems = []
    for problem in problems:
        log.warning(problem)
    # What is loaded by now lives as long as the process: out of the collector's
    # generations (as in the worker), a full collection walks only what requests made.
    # It walked it all, some 80 ms holding the loop, every 100,000 documents or so of a
    # streamed body (those a piece made outlive two collections).
    gc.collect()
    gc.freeze()
    yield


class _Api(FastAPI):
    def build_middleware_stack(self) -> ASGIApp:
        # Outside FastAPI's own body limit, which answers a 413 itself (JsonBodyTooLarge).
        app = JsonBodyTooLarge(super().build_middleware_stack(), too_large_response())
        return HeadAsGet(app, self.router)


def create_app() -> FastAPI:
    app = _Api(
        title="dispatch",
        version="0.1.0",
        description="Send email campaigns through any provider and track every message.",
        max_body_size=MAX_API_BODY_BYTES,
        lifespan=_lifespan,
        # operationId = the route's function name: a generated client's methods read
        # create_campaign, not create_campaign_v1_campaigns_post.
        generate_unique_id_function=lambda route: route.name,
    )

    app.include_router(callbacks_router)
    install_error_handlers(app)
    app.include_router(providers.router)
    app.include_router(campaigns.router)
    app.include_router(suppressions.router)
    app.include_router(preference_choices.router)
    app.include_router(unsubscribe_tokens.router)
    app.include_router(pages.router)

    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            # The routes the app's body limit applies to (not streamed ones); included
            # routers' routes are only seen through their contexts.
            bounded = [
                (method.lower(), str(route.path_format))
                for route in iter_route_contexts(app.routes)
                if isinstance(route.original_route, APIRoute)
                and route.include_in_schema
                and route.max_body_size == MAX_API_BODY_BYTES
                for method in route.methods or ()
            ]
            document = complete_document(default_openapi(), bounded)
            app.openapi_schema = add_provider_schemas(campaigns.document_campaign_body(document))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    # Neither reads a body: one sent is left unread, whatever its size (no 413).
    @app.get("/healthz", tags=["operations"], responses=HEALTH_RESPONSES, max_body_size=STREAMED)
    def healthz() -> dict[str, str]:
        """200 when Redis answers; 503 otherwise."""
        try:
            store.sync_client().ping()
        except Exception as exc:  # any Redis failure means not healthy
            from fastapi import HTTPException

            raise HTTPException(503, f"redis unavailable: {type(exc).__name__}") from exc
        return {"status": "ok"}

    @app.get(
        "/metrics", tags=["operations"], response_class=PlainTextResponse, max_body_size=STREAMED
    )
    def metrics() -> Response:
        """Prometheus metrics: this process's (callbacks) and the service's from Redis."""
        from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

        # The service's first: its collector sets up this process's callback series.
        service = generate_latest(_SERVICE_METRICS)
        return Response(
            generate_latest(REGISTRY) + service,
            media_type=CONTENT_TYPE_LATEST,
        )

    return app


app = create_app()
