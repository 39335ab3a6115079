"""The dashboard's pages: sign-in, the operator's fleet and usage, an owner's cars, earnings and policy, a
tenant's jobs. Server-rendered (Jinja2) from the coordinator's own state; scripts and styles are this package's
files (``static/``), and the Content-Security-Policy lets the browser load nothing from anywhere else.

Who may see a page is decided here, from the session alone: a page for the operator answers 403 to an owner or
a tenant, a page without a session sends the browser to the login form, and an owner's or tenant's page shows the
signed-in principal's own data whatever the URL says.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from ..billing.money import format_micro
from ..errors import AuthError, InvalidInput
from .pages import fleet_page, job_rows, owner_page, recent_months, usage_page
from .policy_form import PolicyForm
from .session import COOKIE, SESSION_MAX_AGE_S, Role, Session, Sessions

if TYPE_CHECKING:
    from ..coordinator.app import Coordinator

__all__ = ["STATIC", "dashboard_routes"]

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
_AT = "/dashboard/static"
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
_MAX_FORM_BYTES = 4096
_HOME: dict[str, str] = {"operator": "/dashboard/fleet", "owner": "/dashboard/owner", "tenant": "/dashboard/jobs"}


def _hardened(response: Response) -> Response:
    response.headers["content-security-policy"] = _CSP
    response.headers["x-content-type-options"] = "nosniff"
    response.headers["referrer-policy"] = "same-origin"
    response.headers["cache-control"] = "no-store"  # pages hold one principal's data
    return response


def _templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    env = templates.env
    env.filters["money"] = lambda micro, currency: format_micro(int(micro), currency, places=2)
    env.globals["static"] = _AT
    return templates


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > _MAX_FORM_BYTES:
        raise InvalidInput(f"form of {len(body)} bytes is too large; at most {_MAX_FORM_BYTES}")
    return {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}


def dashboard_routes(app: FastAPI, coord: Coordinator) -> None:
    sessions = Sessions(coord.store, coord.auth)
    templates = _templates()
    app.mount(_AT, StaticFiles(directory=STATIC), name="dashboard-static")

    def render(request: Request, name: str, status: int = 200, **context: Any) -> Response:
        return _hardened(templates.TemplateResponse(request, name, context, status_code=status))

    def session_of(request: Request) -> Session | None:
        return sessions.read(request.cookies.get(COOKIE))

    async def gate(request: Request, role: Role) -> Session | Response:
        """The session if it is ``role``'s; otherwise the answer to send: the login form, or 403."""
        session = await asyncio.to_thread(session_of, request)
        if session is None:
            return _hardened(RedirectResponse(f"/login?next={request.url.path}", status_code=303))
        if session.role != role:
            return render(request, "forbidden.html", status=403, session=session, home=_HOME[session.role])
        return session

    @app.get("/", include_in_schema=False)
    def root() -> Response:
        return RedirectResponse("/dashboard", status_code=307)

    @app.get("/dashboard", include_in_schema=False)
    async def home(request: Request) -> Response:
        session = await asyncio.to_thread(session_of, request)
        return _hardened(RedirectResponse(_HOME[session.role] if session else "/login", status_code=303))

    @app.get("/login", include_in_schema=False)
    async def login_form(request: Request) -> Response:
        return render(request, "login.html", error=None)

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        form = await _form(request)
        try:
            session, cookie = await asyncio.to_thread(sessions.login, form.get("token", ""))
        except AuthError as exc:
            return render(request, "login.html", status=401, error=exc.message)
        target = form.get("next", "")
        if not target.startswith("/dashboard/") or "//" in target:  # only our own pages: no open redirect
            target = _HOME[session.role]
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, cookie, max_age=SESSION_MAX_AGE_S, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https", path="/")
        return _hardened(response)

    @app.post("/logout", include_in_schema=False)
    async def logout() -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return _hardened(response)

    @app.get("/dashboard/fleet", include_in_schema=False)
    async def fleet(request: Request) -> Response:
        session = await gate(request, "operator")
        if isinstance(session, Response):
            return session
        page = await asyncio.to_thread(fleet_page, coord)
        return render(request, "fleet.html", session=session, page=page)

    @app.get("/dashboard/usage", include_in_schema=False)
    async def usage(request: Request, page: int = 1, month: str | None = None) -> Response:
        session = await gate(request, "operator")
        if isinstance(session, Response):
            return session
        try:
            data = await asyncio.to_thread(usage_page, coord, page, month)
        except InvalidInput as exc:  # a month that is not one: the form again, saying what is accepted
            return render(request, "usage.html", status=400, session=session, page=None,
                          months=recent_months(coord), error=exc.message)
        return render(request, "usage.html", session=session, page=data, months=data.months)

    @app.get("/dashboard/jobs", include_in_schema=False)
    async def jobs(request: Request) -> Response:
        session = await gate(request, "tenant")
        if isinstance(session, Response):
            return session
        rows = await asyncio.to_thread(lambda: job_rows(coord, coord.store.list_jobs(session.name)))
        return render(request, "jobs.html", session=session, jobs=rows)

    async def owner_view(request: Request, session: Session, *, status: int = 200, form: PolicyForm | None = None,
                         saved: bool = False) -> Response:
        data = await asyncio.to_thread(owner_page, coord, session.name)
        cookie = request.cookies.get(COOKIE, "")
        return render(request, "owner.html", status=status, session=session, page=data,
                      form=form or PolicyForm.of(data.policy), saved=saved, csrf=sessions.csrf_token(cookie))

    @app.get("/dashboard/owner", include_in_schema=False)
    async def owner(request: Request, saved: int = 0) -> Response:
        session = await gate(request, "owner")
        if isinstance(session, Response):
            return session
        return await owner_view(request, session, saved=bool(saved))

    @app.post("/dashboard/owner/policy", include_in_schema=False)
    async def owner_policy(request: Request) -> Response:
        session = await gate(request, "owner")
        if isinstance(session, Response):
            return session
        fields = await _form(request)
        if not sessions.check_csrf(request.cookies.get(COOKIE, ""), fields.get("csrf")):
            return render(request, "forbidden.html", status=403, session=session, home=_HOME["owner"],
                          reason="the form's security token is missing or stale; reload the page and try again")
        form = PolicyForm.from_fields(fields)
        if form.errors:
            return await owner_view(request, session, status=400, form=form)
        await asyncio.to_thread(coord.store.set_owner_policy, session.name, form.policy().to_json())
        return _hardened(RedirectResponse("/dashboard/owner?saved=1", status_code=303))
