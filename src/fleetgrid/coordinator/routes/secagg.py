"""The car's side of a secure-aggregation round (``/v1/train/leases/{lease_id}/secagg/{phase}``): POST its message
of a phase, GET its part of the next one (``ready: false`` until the coordinator reached it). Authenticated as the
car owning the lease; a lease reads and writes only its own round. Any replica serves them: the messages go
through the shared store to the replica driving the job (see :mod:`..secure_relay`)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Literal

from fastapi import Depends, FastAPI, Request, Response

from ...protocol import API_PREFIX
from ...secagg_wire import (
    KeyAdvertisementBody,
    MaskedBody,
    SecAggAck,
    SecAggDownlink,
    ShareBundleBody,
    UnmaskBody,
)
from ..auth import car
from ..observe import note_principal
from ..secure_relay import VERDICT_POLL_S, VERDICT_WAIT_S
from ..security import accepts

if TYPE_CHECKING:
    from pydantic import BaseModel

    from ..app import Coordinator
    from ..store import VehicleRecord

__all__ = ["secagg_routes"]


def secagg_routes(app: FastAPI, coord: Coordinator) -> None:
    relay = coord.training.secure.relay
    base = f"{API_PREFIX}/train/leases/{{lease_id}}/secagg"

    @accepts("vehicle")
    async def vehicle(request: Request) -> VehicleRecord:
        found = await car(coord.auth, request)
        note_principal(request.scope, "vehicle")
        return found

    async def receive(v: VehicleRecord, lease_id: str, phase: str, body: BaseModel, response: Response) -> SecAggAck:
        round_id = await asyncio.to_thread(relay.receive, v, lease_id, phase, body)
        # Wait for the driving replica's verdict here, on the event loop, not in a worker thread: a cohort of cars
        # waiting at once would otherwise hold the thread pool every other route needs.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + VERDICT_WAIT_S
        while loop.time() < deadline:
            ack = await asyncio.to_thread(relay.verdict, round_id, v.vehicle_id, phase)
            if ack is not None:
                return ack
            await asyncio.sleep(VERDICT_POLL_S)
        response.status_code = 202  # stored; the driving replica has not ruled on it yet
        return SecAggAck(round_id=round_id, phase=phase, pending=True)

    @app.post(f"{base}/advertise", response_model=SecAggAck, tags=["vehicle"])
    async def advertise(lease_id: str, body: KeyAdvertisementBody, response: Response,
                        v: VehicleRecord = Depends(vehicle)) -> SecAggAck:
        """Phase 0: the car's two public keys and its seed commitment (after it trained). 409 out of phase or sent
        twice; 202 (``pending``) when stored but not ruled on yet by the driving replica."""
        return await receive(v, lease_id, "advertise", body, response)

    @app.post(f"{base}/share", response_model=SecAggAck, tags=["vehicle"])
    async def share(lease_id: str, body: ShareBundleBody, response: Response,
                    v: VehicleRecord = Depends(vehicle)) -> SecAggAck:
        """Phase 1: shares of the car's secrets, sealed for each neighbour that advertised."""
        return await receive(v, lease_id, "share", body, response)

    @app.post(f"{base}/masked", response_model=SecAggAck, tags=["vehicle"])
    async def masked(lease_id: str, body: MaskedBody, response: Response,
                     v: VehicleRecord = Depends(vehicle)) -> SecAggAck:
        """Phase 2: the masked input, uploaded first as an artifact and named by ``report.update``, with the
        report of the work behind it (the lease is completed and metered when the round closes)."""
        return await receive(v, lease_id, "masked", body, response)

    @app.post(f"{base}/unmask", response_model=SecAggAck, tags=["vehicle"])
    async def unmask(lease_id: str, body: UnmaskBody, response: Response,
                     v: VehicleRecord = Depends(vehicle)) -> SecAggAck:
        """Phase 3: the shares asked for; a share that does not match its dealer's commitment is a 400 naming
        the car, whose answer is set aside (or, answered 202, the error of the car's next fetch)."""
        return await receive(v, lease_id, "unmask", body, response)

    @app.get(f"{base}/{{phase}}", response_model=SecAggDownlink, tags=["vehicle"])
    async def fetch(lease_id: str, phase: Literal["share", "masked", "unmask"],
                    v: VehicleRecord = Depends(vehicle)) -> SecAggDownlink:
        """The car's part of ``phase``: its neighbours' keys (share), the shares dealt to it (masked), or what to
        reveal (unmask); ``ready: false`` with ``retry_after_s`` until the previous phase closed."""
        return await asyncio.to_thread(relay.download, v, lease_id, phase)
