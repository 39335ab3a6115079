"""The API's documentation: an OpenAPI document that declares who may call each operation and what errors it
answers, and /docs and /redoc that render in a real browser (Debian's chromium, headless, through Playwright) with
nothing reachable but the coordinator on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from fleetgrid.coordinator.app import Coordinator, create_app
from fleetgrid.coordinator.config import CoordinatorConfig
from fleetgrid.coordinator.security import SCHEMES
from harness import ENROLL, OPERATOR, TENANT, start_coordinator

CHROMIUM = Path("/usr/bin/chromium")
PUBLIC = {("POST", "/v1/vehicles/enroll")}
"""Operations that take no bearer credential: enrolling (the fleet token is in the body)."""


def openapi(tmp_path: Path) -> dict:
    coord = Coordinator(CoordinatorConfig(data_dir=tmp_path, enroll_token=ENROLL, operator_token=OPERATOR))
    app = create_app(coordinator=coord)

    async def fetch() -> dict:
        transport = httpx.ASGITransport(app=app)
        async with app.app.router.lifespan_context(app.app):
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
            assert errors, f"{key} declares no 4xx answer"
            for status, answer in errors.items():
                assert answer["content"]["application/json"]["schema"] == error_ref, (key, status)
    # Every reference resolves inside the document (ReDoc renders nothing when one does not).
    defined = set(schema["components"]["schemas"])

    def refs(node):  # every "$ref" in the document
        if isinstance(node, dict):
            for key, value in node.items():
                yield from ([value] if key == "$ref" else refs(value))
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    dangling = {r for r in refs(schema) if r.removeprefix("#/components/schemas/") not in defined}
    assert not dangling, dangling
    assert ("GET", "/metrics") in seen and ("POST", "/v1/leases") in seen
    assert schema["paths"]["/metrics"]["get"]["security"] == [{"operator": []}]
    assert schema["paths"]["/v1/leases"]["post"]["security"] == [{"vehicle": []}]  # the hot route, no Depends
    assert schema["paths"]["/v1/artifacts/{digest}"]["put"]["security"] == [{"vehicle": []}, {"tenant": []}]
    assert "507" in schema["paths"]["/v1/artifacts/{digest}"]["put"]["responses"]
    assert "HTTPValidationError" not in json.dumps(schema)  # a 422 is an ErrorBody like every error


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = start_coordinator(tmp_path_factory.mktemp("coord"))
    yield proc
    proc.stop()
    assert "Traceback" not in proc.log(), proc.log()[-3000:]


@pytest.fixture
def browser():
    assert CHROMIUM.exists() or shutil.which("chromium"), \
        "these tests drive Debian's chromium: `make chromium` (or apt-get install chromium) installs it"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()


class Offline:
    """A browser page that may reach 127.0.0.1 only: every other request is aborted and remembered."""

    def __init__(self, browser) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.blocked: list[str] = []
        self.local: list[str] = []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("request", self._seen)
        self.refused: list[str] = []  # what the page's Content-Security-Policy kept the browser from loading
        self.page.on("console", lambda m: self.refused.append(m.text) if "Content Security Policy" in m.text
                     else None)

    def _route(self, route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            self.blocked.append(route.request.url)
            route.abort()

    def _seen(self, request) -> None:
        url = request.url
        if url.startswith(("data:", "blob:")):
            return
        (self.local if urlsplit(url).hostname == "127.0.0.1" else self.blocked).append(url)


def test_swagger_ui_lists_every_operation_offline_and_try_it_out_works_with_a_token(server, browser, tmp_path):
    schema = httpx.get(server.url + "/openapi.json").json()
    operations = sum(len(ops) for ops in schema["paths"].values())
    offline = Offline(browser)
    page = offline.page
    page.goto(server.url + "/docs")
    page.wait_for_selector(".opblock", timeout=30_000)
    assert page.locator(".opblock").count() == operations
    page.screenshot(path=str(tmp_path / "docs.png"), full_page=True)
    assert (tmp_path / "docs.png").stat().st_size > 10_000

    # Authorize as the tenant, then "Try it out" on GET /v1/jobs: the token goes with the request.
    page.click("button.authorize")
    tenant = page.locator(".auth-container").filter(has_text="tenant")
    tenant.locator("input").fill(TENANT)
    tenant.locator("button.authorize").click()
    page.click("button.btn-done")
    jobs = page.locator("#operations-tenant-jobs_v1_jobs_get")
    jobs.locator(".opblock-summary").click()
    jobs.locator("button.try-out__btn").click()
    jobs.locator("button.execute").click()
    status = jobs.locator(".live-responses-table tr.response .response-col_status").first
    status.wait_for(timeout=30_000)
    assert status.inner_text().strip() == "200"
    page.screenshot(path=str(tmp_path / "docs-try-it-out.png"))
    assert not offline.blocked, f"/docs reached beyond 127.0.0.1: {offline.blocked}"
    assert not offline.refused, offline.refused
    assert any("/docs/assets/swagger-ui/swagger-ui-bundle.js" in url for url in offline.local)
    offline.context.close()


def test_redoc_renders_offline(server, browser, tmp_path):
    offline = Offline(browser)
    page = offline.page
    page.goto(server.url + "/redoc")
    page.wait_for_selector("[data-section-id^='tag/']", timeout=30_000)
    page.get_by_text("/v1/leases/{lease_id}/complete").first.wait_for(state="attached", timeout=30_000)
    page.screenshot(path=str(tmp_path / "redoc.png"))
    assert not offline.blocked, f"/redoc reached beyond 127.0.0.1: {offline.blocked}"
    assert not offline.refused, offline.refused
    assert any("/docs/assets/redoc/redoc.standalone.js" in url for url in offline.local)
    offline.context.close()


def test_docs_pages_may_load_only_from_the_coordinator(server):
    for page in ("/docs", "/redoc"):
        policy = httpx.get(server.url + page).headers["content-security-policy"]
        assert "default-src 'self'" in policy and "http" not in policy, policy


def test_docs_assets_are_served_and_unknown_ones_are_404(server):
    css = httpx.get(server.url + "/docs/assets/swagger-ui/swagger-ui.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    missing = httpx.get(server.url + "/docs/assets/../static/nothing.js")
    assert missing.status_code == 404
    assert httpx.get(server.url + "/docs/assets/redoc/nothing.js").status_code == 404
