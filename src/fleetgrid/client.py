"""The tenant's and operator's side of the coordinator API: upload, submit, watch, fetch results, fleet overview.

Errors arrive as :mod:`fleetgrid.errors` classes, translated at this boundary exactly as the vehicle transport does.
"""

from __future__ import annotations

import hashlib
import io
import json
import ssl
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydantic
import tenacity

from .billing.protocol import OwnerCreated, OwnerStatementView, OwnerSummary, PriceListView, TenantBillView
from .errors import InvalidInput, NotFound, TransportError
from .identity.protocol import AuditEntry, EnrollmentTokenIssued, EnrollmentTokenView, VehicleSuspension
from .protocol import (
    API_PREFIX,
    FleetOverview,
    JobStatus,
    JobSubmit,
    LedgerEntry,
    TenantCreated,
    TenantSummary,
    TrainSubmit,
    VehicleReputation,
    VehicleSummary,
)
from .retry import backoff
from .wire_errors import error_from_response
from .workloads.serving.messages import DeploymentStatus

__all__ = ["FleetgridClient", "encode_inputs"]

_TERMINAL = {"done", "failed", "cancelled"}
_MAX_WAIT_S = 10.0
"""The longest pause between tries of a poll that failed on the network."""


def encode_inputs(inputs: np.ndarray | Sequence[str] | bytes, input_format: str | None = None) -> tuple[bytes, str]:
    """Inputs as upload bytes and their format: arrays as .npy, strings as JSON Lines, bytes as given."""
    if isinstance(inputs, bytes):
        if input_format not in ("npy", "jsonl"):
            raise InvalidInput("raw input bytes need input_format 'npy' or 'jsonl'")
        return inputs, input_format
    if isinstance(inputs, np.ndarray):
        buf = io.BytesIO()
        np.save(buf, inputs, allow_pickle=False)
        return buf.getvalue(), "npy"
    return "".join(json.dumps(str(s)) + "\n" for s in inputs).encode(), "jsonl"


class FleetgridClient:
    """``token`` is a tenant token for job calls, the operator token for fleet calls. ``transport`` replaces the
    network, as in the vehicle client: an app in this process, or an ``httpx.MockTransport``."""

    def __init__(
        self, base_url: str, token: str, *, verify: bool | str | ssl.SSLContext = True, timeout_s: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise InvalidInput(f"coordinator URL {base_url!r} must start with http:// or https://, "
                               "e.g. http://127.0.0.1:8787")
        self.base_url = base_url.rstrip("/")
        if isinstance(verify, str):
            try:
                verify = ssl.create_default_context(cafile=verify)
            except (OSError, ssl.SSLError) as exc:
                raise InvalidInput(f"CA bundle {verify} cannot be loaded ({exc}); expected a PEM file of "
                                   "certificates, e.g. the --tls-cert the coordinator serves") from exc
        self._http = httpx.Client(base_url=self.base_url, verify=verify, timeout=timeout_s,
                                  headers={"authorization": f"Bearer {token}"}, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> FleetgridClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, API_PREFIX + path, **kwargs)
        except httpx.HTTPError as exc:
            raise TransportError(f"{method} {self.base_url}{API_PREFIX}{path} failed: {exc}") from exc
        if response.status_code >= 400:
            raise error_from_response(response)
        return response

    # --- tenant -------------------------------------------------------------------------------------------------
    def upload(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        self._call("PUT", f"/artifacts/{digest}", content=data)
        return digest

    def models(self) -> list[dict[str, Any]]:
        """Your deployments (``deployed: true``) and the registered models, as OpenAI's model objects."""
        return self._call("GET", "/models").json()["data"]

    def submit(self, model: str, inputs: np.ndarray | Sequence[str] | bytes, *, input_format: str | None = None,
               model_file: bytes | Path | None = None, **options: Any) -> JobStatus:
        """Upload inputs (and a model file), then submit; ``options`` are further JobSubmit fields."""
        data, fmt = encode_inputs(inputs, input_format)
        raw = _read_model_file(model_file) if isinstance(model_file, (str, Path)) else model_file
        placeholder = "0" * 64  # any digest: the body is checked before anything is uploaded
        check = {"model": model, "inputs": placeholder, "input_format": fmt, **options}
        _validated(JobSubmit, check | ({"model_file": placeholder} if raw is not None else {}))
        body: dict[str, Any] = {"model": model, "inputs": self.upload(data), "input_format": fmt, **options}
        if raw is not None:
            body["model_file"] = self.upload(raw)
        return JobStatus.model_validate(self._call("POST", "/jobs", json=body).json())

    def submit_train(self, model: str, *, data: dict[str, Any] | None = None, strategy: str = "fedavg",
                     settings: dict[str, Any] | None = None, rounds: int = 10, **options: Any) -> JobStatus:
        """Start a federated training job; ``options`` are further TrainSubmit fields (name, target_metric, ...)."""
        body = {"model": model, "data": data or {}, "strategy": strategy, "settings": settings or {},
                "rounds": rounds, **options}
        _validated(TrainSubmit, body)
        return JobStatus.model_validate(self._call("POST", "/train/jobs", json=body).json())

    def job(self, job_id: str) -> JobStatus:
        return JobStatus.model_validate(self._call("GET", f"/jobs/{job_id}").json())

    def jobs(self) -> list[JobStatus]:
        return [JobStatus.model_validate(j) for j in self._call("GET", "/jobs").json()]

    def cancel(self, job_id: str) -> JobStatus:
        return JobStatus.model_validate(self._call("POST", f"/jobs/{job_id}/cancel").json())

    # --- serving -----------------------------------------------------------------------------------------------
    def deploy(self, model: str, *, replicas: int = 1, name: str = "", weights: str | None = None,
               from_job: str | None = None, max_replicas: int | None = None, spares: int = 0) -> JobStatus:
        """Keep ``model`` resident on ``replicas`` cars, callable as ``name`` (default: the model's name) through
        the OpenAI-compatible API. A generative model ('charlm') serves ``weights`` (an artifact digest) or the
        result of the finished training job ``from_job``. With ``max_replicas`` the count scales with demand between
        ``replicas`` and it; ``spares`` warm replicas are kept beyond what demand needs."""
        body: dict[str, Any] = {"kind": "serve", "model": model, "replicas": replicas, "name": name,
                                "max_replicas": max_replicas, "spares": spares}
        if weights is not None:
            body["weights"] = weights
        if from_job is not None:
            body["from_job"] = from_job
        return JobStatus.model_validate(self._call("POST", "/jobs", json=body).json())

    def deployments(self) -> list[DeploymentStatus]:
        return [DeploymentStatus.model_validate(d) for d in self._call("GET", "/deployments").json()]

    def undeploy(self, name: str) -> JobStatus:
        """End deployment ``name``: its cars give the model up at their next renewal."""
        found = [d for d in self.deployments() if d.name == name]
        if not found:
            names = sorted(d.name for d in self.deployments())
            raise NotFound(f"no deployment named {name!r}; yours: {names or 'none'}")
        return self.cancel(found[0].job_id)

    def result_bytes(self, job_id: str) -> bytes:
        return self._call("GET", f"/jobs/{job_id}/result").content

    def result(self, job_id: str) -> np.ndarray:
        return np.load(io.BytesIO(self.result_bytes(job_id)), allow_pickle=False)

    def wait(self, job_id: str, *, timeout_s: float = 3600.0, poll_s: float = 0.5,
             on_update: Callable[[JobStatus], None] | None = None,
             on_retry: Callable[[TransportError, float], None] | None = None) -> JobStatus:
        """Poll until the job is done, failed or cancelled (or ``timeout_s`` passes: TransportError).

        A poll that fails on the network is tried again with jittered exponential back-off until the timeout, so
        a blip or a coordinator restart does not end the wait; ``on_retry(error, wait_s)`` hears of each retry.
        """
        until = time.monotonic() + timeout_s
        poll = self._patient(until, poll_s, on_retry)
        while True:
            status = poll(self.job, job_id)
            if on_update is not None:
                on_update(status)
            if status.state in _TERMINAL:
                return status
            if time.monotonic() > until:
                raise TransportError(f"job {job_id} still {status.state} after {timeout_s:.0f} s")
            time.sleep(poll_s)

    @staticmethod
    def _patient(until: float, base_s: float,
                 on_retry: Callable[[TransportError, float], None] | None) -> tenacity.Retrying:
        def tell(state: tenacity.RetryCallState) -> None:
            if on_retry is not None and state.outcome is not None and state.next_action is not None:
                on_retry(state.outcome.exception(), state.next_action.sleep)  # type: ignore[arg-type]

        return tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(TransportError), wait=backoff(base_s, _MAX_WAIT_S),
            stop=lambda _state: time.monotonic() >= until, before_sleep=tell, reraise=True,
        )

    # --- operator -----------------------------------------------------------------------------------------------
    def fleet(self) -> FleetOverview:
        return FleetOverview.model_validate(self._call("GET", "/fleet").json())

    def vehicles(self) -> list[VehicleSummary]:
        return [VehicleSummary.model_validate(v) for v in self._call("GET", "/vehicles").json()]

    def ledger(self) -> list[LedgerEntry]:
        return [LedgerEntry.model_validate(v) for v in self._call("GET", "/ledger").json()]

    def reputations(self, vehicle_id: str | None = None) -> list[VehicleReputation]:
        """One car's reputation, or every checked or suspended car's."""
        if vehicle_id is not None:
            return [VehicleReputation.model_validate(self._call("GET", f"/vehicles/{vehicle_id}/reputation").json())]
        return [VehicleReputation.model_validate(v) for v in self._call("GET", "/reputation").json()]

    def revoke(self, vehicle_id: str) -> None:
        self._call("POST", f"/vehicles/{vehicle_id}/revoke")

    def add_tenant(self, name: str) -> str:
        """A new tenant's token; the coordinator keeps only its hash, so this is the only time it is seen."""
        return TenantCreated.model_validate(self._call("POST", "/tenants", json={"name": name}).json()).token

    def tenants(self) -> list[TenantSummary]:
        return [TenantSummary.model_validate(t) for t in self._call("GET", "/tenants").json()]

    def revoke_tenant(self, name: str) -> TenantSummary:
        return TenantSummary.model_validate(self._call("POST", f"/tenants/{name}/revoke").json())

    # --- identity -----------------------------------------------------------------------------------------------
    def issue_enrollment_token(self, *, uses: int | None = 1, expires_in_s: float | None = None,
                               label: str = "") -> EnrollmentTokenIssued:
        """A new enrollment token (in ``.token``, seen only this once): ``uses`` None for any number."""
        body = {"uses": uses, "expires_in_s": expires_in_s, "label": label}
        return EnrollmentTokenIssued.model_validate(self._call("POST", "/enrollment-tokens", json=body).json())

    def enrollment_tokens(self) -> list[EnrollmentTokenView]:
        return [EnrollmentTokenView.model_validate(t) for t in self._call("GET", "/enrollment-tokens").json()]

    def revoke_enrollment_token(self, token_id: str) -> EnrollmentTokenView:
        return EnrollmentTokenView.model_validate(self._call("DELETE", f"/enrollment-tokens/{token_id}").json())

    def suspend(self, vehicle_id: str, reason: str) -> VehicleSuspension:
        r = self._call("POST", f"/vehicles/{vehicle_id}/suspend", json={"reason": reason})
        return VehicleSuspension.model_validate(r.json())

    def unsuspend(self, vehicle_id: str) -> VehicleSuspension:
        return VehicleSuspension.model_validate(self._call("POST", f"/vehicles/{vehicle_id}/unsuspend").json())

    def audit(self, *, limit: int = 100, before: int | None = None) -> list[AuditEntry]:
        params: dict[str, int] = {"limit": limit} | ({"before": before} if before is not None else {})
        return [AuditEntry.model_validate(e) for e in self._call("GET", "/audit", params=params).json()]

    # --- billing ------------------------------------------------------------------------------------------------
    def set_prices(self, currency: str, operator_fee: str, prices: dict[str, dict[str, str]]) -> PriceListView:
        body = {"currency": currency, "operator_fee": operator_fee, "prices": prices}
        return PriceListView.model_validate(self._call("PUT", "/prices", json=body).json())

    def prices(self) -> PriceListView:
        return PriceListView.model_validate(self._call("GET", "/prices").json())

    def add_owner(self, name: str, tariff: str | None = None) -> str:
        """A new owner's token, seen only this once."""
        body = {"name": name} | ({"tariff": tariff} if tariff is not None else {})
        return OwnerCreated.model_validate(self._call("POST", "/owners", json=body).json()).token

    def owners(self) -> list[OwnerSummary]:
        return [OwnerSummary.model_validate(o) for o in self._call("GET", "/owners").json()]

    def attach_car(self, owner: str, vehicle_id: str) -> OwnerSummary:
        r = self._call("POST", f"/owners/{owner}/cars", json={"vehicle_id": vehicle_id})
        return OwnerSummary.model_validate(r.json())

    def owner_statement(self, month: str | None = None, owner: str | None = None) -> OwnerStatementView:
        """The calling owner's statement; with ``owner`` (and the operator token), that owner's."""
        path = "/owner/statement" if owner is None else f"/owners/{owner}/statement"
        r = self._call("GET", path, params={"month": month} if month else None)
        return OwnerStatementView.model_validate(r.json())

    def tenant_bill(self, month: str | None = None) -> TenantBillView:
        return TenantBillView.model_validate(self._call("GET", "/bill", params={"month": month} if month else None)
                                             .json())

    def payouts(self, month: str | None = None) -> str:
        return self._call("GET", "/payouts", params={"month": month} if month else None).text


def _read_model_file(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidInput(f"model file {path} cannot be read ({exc.strerror}); give the path of your TorchScript "
                           "(torch.jit.save, .pt) or torch.export (torch.export.save, .pt2) file") from exc


def _validated(model: type[pydantic.BaseModel], body: dict[str, Any]) -> None:
    """Check a request body here, before any upload or round trip; InvalidInput names each bad field."""
    try:
        model.model_validate(body)
    except pydantic.ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg'].removeprefix('Value error, ')}"
                             for e in exc.errors()[:8])
        raise InvalidInput(f"{model.__name__} is not valid: {problems}") from exc
