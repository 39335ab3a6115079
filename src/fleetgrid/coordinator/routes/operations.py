"""Operations routes: Prometheus metrics, and the API documentation pages served from vendored assets.

``GET /metrics`` takes the operator token, as a bearer token: Prometheus sends it with ``authorization:
{credentials_file: ...}`` in the scrape config. The figures name jobs and describe the whole fleet, so they are
the operator's to see.

``/docs`` and ``/redoc`` load their scripts and styles from this coordinator (see ``static/apidocs/README.md``), and
their Content-Security-Policy keeps the browser from loading anything from anywhere else, should a later bundle
try.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import Depends, FastAPI, Request, Response
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from ..metrics import CONTENT_TYPE
from ..observe import note_principal
from ..security import accepts

if TYPE_CHECKING:
    from ..app import Coordinator

__all__ = ["ASSETS", "operations_routes"]

ASSETS = Path(__file__).resolve().parent.parent / "static" / "apidocs"
_AT = "/docs/assets"
# The pages' own inline start-up script and styles, this origin, and ReDoc's search worker (a blob: URL).
_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'")


def _local_only(page: HTMLResponse) -> HTMLResponse:
    page.headers["content-security-policy"] = _CSP
    return page


def operations_routes(app: FastAPI, coord: Coordinator) -> None:
    @accepts("operator")
    def operator(request: Request) -> None:
        coord.auth.operator(request.headers.get("authorization"))
        note_principal(request.scope, "operator")

    @app.get("/metrics", tags=["operations"], response_class=Response, dependencies=[Depends(operator)],
             responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format"}})
    def metrics() -> Response:
        """Every metric in Prometheus's text format: counters and latency of this replica, fleet-wide gauges read
        from the database now (see the README's Operations section)."""
        return Response(coord.metrics.render(), media_type=CONTENT_TYPE)

    app.mount(_AT, StaticFiles(directory=ASSETS), name="apidocs")

    @app.get("/docs", include_in_schema=False)
    async def swagger() -> HTMLResponse:
        return _local_only(get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} - API",
            swagger_js_url=f"{_AT}/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url=f"{_AT}/swagger-ui/swagger-ui.css",
            swagger_favicon_url=f"{_AT}/swagger-ui/favicon-32x32.png"))

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return _local_only(get_redoc_html(
            openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} - API",
            redoc_js_url=f"{_AT}/redoc/redoc.standalone.js",
            redoc_favicon_url=f"{_AT}/swagger-ui/favicon-32x32.png", with_google_fonts=False))
