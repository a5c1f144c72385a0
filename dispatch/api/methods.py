"""Which methods a path takes: HEAD answered as GET, and a 405's ``Allow`` listing them all.

FastAPI's routes take only the methods they declare, each route one: a HEAD to a GET
route was a 405 (RFC 9110 §9.1: a server must take HEAD wherever it takes GET; uptime
checks ask ``/healthz`` with HEAD), and a 405's ``Allow`` named the methods of the first
route of the path alone (``DELETE /v1/providers/x`` answered ``Allow: PUT``, not ``GET,
PUT, DELETE``), though §15.5.6 asks for every method the resource takes.
"""

from __future__ import annotations

from starlette.routing import Match, Router
from starlette.types import ASGIApp, Receive, Scope, Send

_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def _takes(router: Router, scope: Scope, method: str) -> bool:
    """Whether a route of ``router`` answers ``method`` at the path of ``scope``."""
    probe = {
        "type": "http",
        "path": scope["path"],
        "root_path": scope.get("root_path", ""),
        "method": method,
    }
    return any(route.matches(probe)[0] is Match.FULL for route in router.routes)


def allowed_methods(router: Router, scope: Scope) -> list[str]:
    """The methods the path of ``scope`` takes (HEAD wherever GET), in a fixed order."""
    taken = [method for method in _METHODS if _takes(router, scope, method)]
    if "GET" in taken and "HEAD" not in taken:
        taken.insert(taken.index("GET") + 1, "HEAD")
    return taken


class HeadAsGet:
    """ASGI wrapper: a HEAD to a path with a GET route and no HEAD route of its own runs
    the GET; the server sends its status and headers without the body (it knows the
    request was a HEAD), as Starlette's own routes do for GET."""

    def __init__(self, app: ASGIApp, router: Router) -> None:
        self.app = app
        self.router = router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "HEAD"
            and not _takes(self.router, scope, "HEAD")
            and _takes(self.router, scope, "GET")
        ):
            scope = {**scope, "method": "GET"}
        await self.app(scope, receive, send)
