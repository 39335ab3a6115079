"""Operations routes: Prometheus metrics.

``GET /metrics`` takes the operator token, as a bearer token: Prometheus sends it with ``authorization:
{credentials_file: ...}`` in the scrape config. The figures name jobs and describe the whole fleet, so they are
the operator's to see.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import Depends, FastAPI, Request, Response

from ..metrics import CONTENT_TYPE
from ..observe import note_principal
from ..security import accepts

if TYPE_CHECKING:
    from ..app import Coordinator

__all__ = ["operations_routes"]


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

