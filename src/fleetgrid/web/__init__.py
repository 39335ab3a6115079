"""The coordinator's web dashboard: server-rendered pages for the operator (the fleet, jobs, usage), for owners
(their cars, earnings and policy) and for tenants (their jobs), signed in with the same tokens as the API."""

from __future__ import annotations

from .routes import dashboard_routes

__all__ = ["dashboard_routes"]
