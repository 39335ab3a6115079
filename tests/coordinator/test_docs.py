"""The API's documentation: an OpenAPI document that declares who may call each operation and what errors it
answers."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx

from fleetgrid.coordinator.app import Coordinator, create_app, fastapi_of
from fleetgrid.coordinator.config import CoordinatorConfig
from fleetgrid.coordinator.security import SCHEMES
from harness import ENROLL, OPERATOR

PUBLIC = {("POST", "/v1/vehicles/enroll"), ("GET", "/v1/models")}
"""Operations that take no bearer credential: enrolling (the fleet token is in the body), the model list."""


def openapi(tmp_path: Path) -> dict:
    coord = Coordinator(CoordinatorConfig(data_dir=tmp_path, enroll_token=ENROLL, operator_token=OPERATOR))
    app = create_app(coordinator=coord)

    async def fetch() -> dict:
        transport = httpx.ASGITransport(app=app)
        async with fastapi_of(app).router.lifespan_context(fastapi_of(app)):
            async with httpx.AsyncClient(transport=transport, base_url="http://coordinator") as client:
                r = await client.get("/openapi.json")
                assert r.status_code == 200
                return r.json()

    try:
        return asyncio.run(fetch())
    finally:
        coord.store.close()


def test_every_operation_declares_its_credentials_and_its_errors(tmp_path):
    schema = openapi(tmp_path)
    schemes = schema["components"]["securitySchemes"]
    assert set(schemes) == {"vehicle", "tenant", "operator", "owner"} == set(SCHEMES)
    assert all(s == {"type": "http", "scheme": "bearer", "description": s["description"]} for s in schemes.values())
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    assert "request_id" in schema["components"]["schemas"]["ErrorBody"]["properties"]
    seen = set()
    for path, operations in schema["paths"].items():
        for method, op in operations.items():
            key = (method.upper(), path)
            seen.add(key)
            assert "security" in op, f"{key} does not say which credentials it takes"
            if key in PUBLIC:
                assert op["security"] == [], key
            else:
                assert op["security"] and all(set(req) <= set(schemes) for req in op["security"]), key
                assert "401" in op["responses"], key
            errors = {status: r for status, r in op["responses"].items() if status.startswith("4")}
            if key != ("GET", "/v1/models"):  # it takes no input and no credential: nothing to refuse
                assert errors, f"{key} declares no 4xx answer"
            for status, answer in errors.items():
                assert answer["content"]["application/json"]["schema"] == error_ref, (key, status)
    assert ("GET", "/metrics") in seen and ("POST", "/v1/leases") in seen
    assert schema["paths"]["/metrics"]["get"]["security"] == [{"operator": []}]
    assert schema["paths"]["/v1/leases"]["post"]["security"] == [{"vehicle": []}]  # the hot route, no Depends
    assert schema["paths"]["/v1/artifacts/{digest}"]["put"]["security"] == [{"vehicle": []}, {"tenant": []}]
    assert "507" in schema["paths"]["/v1/artifacts/{digest}"]["put"]["responses"]
    assert "HTTPValidationError" not in json.dumps(schema)  # a 422 is an ErrorBody like every error
