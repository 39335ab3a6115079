"""Content-addressed artifacts: PUT by digest (a car's or a tenant's upload), GET/HEAD with Range for whoever owns
one or holds a lease that needs it."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import StreamingResponse

from ...errors import NotFound
from ...protocol import API_PREFIX, ArtifactInfo
from ..artifacts import parse_range
from ..auth import bearer, car_unread
from ..observe import note_principal
from ..security import accepts

if TYPE_CHECKING:
    from ..app import Coordinator
    from ..store import ArtifactRecord

__all__ = ["artifact_routes"]


def artifact_routes(app: FastAPI, coord: Coordinator) -> None:
    store, artifacts = coord.store, coord.artifacts

    @accepts("vehicle", "tenant")
    def principal(request: Request) -> str:
        header = request.headers.get("authorization")
        kind = "vehicle" if bearer(header).startswith("fgv.") else "tenant"
        who = car_unread(coord.auth, request).vehicle_id if kind == "vehicle" else coord.auth.tenant(header)
        note_principal(request.scope, kind)
        return f"{kind}:{who}"

    def readable(who: str, digest: str) -> ArtifactRecord | None:
        """The artifact's record, if ``who`` may read it."""
        record = store.get_artifact(digest)
        if record is None:
            return None
        if who in record.owners:
            return record
        if who.startswith("vehicle:") and store.vehicle_may_read(who.split(":", 1)[1], digest):
            return record
        return None

    @app.put(f"{API_PREFIX}/artifacts/{{digest}}", response_model=ArtifactInfo, tags=["artifacts"],
             responses={201: {"description": "stored"}, 200: {"description": "already stored"}})
    @accepts(errors=(507,))  # a full disk
    async def put_artifact(digest: str, request: Request, response: Response,
                           who: str = Depends(principal)) -> ArtifactInfo:
        existed = await asyncio.to_thread(artifacts.exists, digest)
        size = await artifacts.put_stream(digest, request.stream(), coord.config.max_artifact_bytes)
        await asyncio.to_thread(store.add_artifact, digest, size, who, coord.clock.now())
        response.status_code = 200 if existed else 201
        return ArtifactInfo(digest=digest, size=size)

    # GET and HEAD as two routes, each with its own OpenAPI operation id.
    @app.head(f"{API_PREFIX}/artifacts/{{digest}}", tags=["artifacts"], response_class=StreamingResponse)
    @app.get(f"{API_PREFIX}/artifacts/{{digest}}", tags=["artifacts"], response_class=StreamingResponse)
    @accepts(errors=(416,))  # a Range past the end
    def get_artifact(digest: str, request: Request, who: str = Depends(principal)):
        artifacts.path(digest)  # rejects a malformed digest with a 400
        record = readable(who, digest)
        if record is None or not artifacts.exists(digest):
            raise NotFound(f"artifact {digest} does not exist or is not yours to read")
        size = artifacts.size(digest)
        rng = parse_range(request.headers.get("range"), size)
        first, last = rng if rng else (0, size - 1)
        headers = {"accept-ranges": "bytes", "content-length": str(max(0, last - first + 1)),
                   "x-content-sha256": digest}
        status = 200
        if rng is not None:
            status = 206
            headers["content-range"] = f"bytes {first}-{last}/{size}"
        if request.method == "HEAD" or size == 0:
            return Response(status_code=status, headers=headers)
        body = artifacts.iter_range(digest, first, last)
        jobs = [owner.removeprefix("job:") for owner in record.owners if owner.startswith("job:")]
        if jobs:  # a training job's global version: the job's progress counts the bytes sent down
            body = coord.training.counted_down(jobs, body)
        return StreamingResponse(body, status_code=status, headers=headers, media_type="application/octet-stream")
