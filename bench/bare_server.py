"""The floor for ``bench/coordinator.py``: a bare Starlette app answering the lease cycle's HTTP exchanges.

Same paths, same request bodies (read, never parsed), same response bodies byte for byte (captured from a real
coordinator's answers, with a fresh lease id of the same length in each), same uvicorn settings as
``fleetgrid serve``; no validation, no authentication, no store. What the coordinator spends per cycle over what
this spends is the cost of fleetgrid itself.

    python bench/bare_server.py --port 8799 --samples samples.json
"""

from __future__ import annotations

import argparse
import json
import uuid
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


class _Template:
    """A captured response body whose lease ids are swapped per answer; ids keep their length, so sizes match."""

    def __init__(self, text: str, *ids: str) -> None:
        self.parts = [text]
        for lease_id in ids:
            self.parts = [piece for part in self.parts for piece in _split_keep(part, lease_id)]

    def render(self, ids: dict[str, str]) -> bytes:
        return "".join(ids.get(p, p) for p in self.parts).encode()


def _split_keep(text: str, sep: str) -> list[str]:
    pieces = text.split(sep)
    out = [pieces[0]]
    for piece in pieces[1:]:
        out += [sep, piece]
    return out


def _fresh_lease_id() -> str:
    return "lease-" + uuid.uuid4().hex  # the coordinator's format (scheduler.lease)


def create_bare_app(samples: dict[str, str]) -> Starlette:
    grant_id = json.loads(samples["lease"])["lease_id"]
    ack = json.loads(samples["complete"])
    done_id, next_id = ack["lease_id"], ack["next_lease"]["lease_id"]
    enroll = samples["enroll"].encode()
    lease = _Template(samples["lease"], grant_id)
    complete = _Template(samples["complete"], done_id, next_id)

    async def enroll_route(request: Request) -> Response:
        await request.body()
        return Response(enroll, status_code=201, media_type="application/json")

    async def lease_route(request: Request) -> Response:
        await request.body()
        return Response(lease.render({grant_id: _fresh_lease_id()}), media_type="application/json")

    async def complete_route(request: Request) -> Response:
        await request.body()
        body = complete.render({done_id: request.path_params["lease_id"], next_id: _fresh_lease_id()})
        return Response(body, media_type="application/json")

    async def healthz(_request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    return Starlette(routes=[
        Route("/v1/vehicles/enroll", enroll_route, methods=["POST"]),
        Route("/v1/leases", lease_route, methods=["POST"]),
        Route("/v1/leases/{lease_id}/complete", complete_route, methods=["POST"]),
        Route("/healthz", healthz),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--samples", type=Path, required=True, help="JSON: captured enroll, lease, complete bodies")
    args = parser.parse_args()
    app = create_bare_app(json.loads(args.samples.read_text()))
    # As coordinator/server.py runs the coordinator, so only the app differs.
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False,
                timeout_keep_alive=30, backlog=4096)


if __name__ == "__main__":
    main()
