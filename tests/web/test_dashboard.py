"""The web dashboard in a real browser (Debian's chromium, headless, through Playwright) against a real coordinator
process: every page renders with nothing reachable but 127.0.0.1, each is screenshotted into tests/artifacts/web/,
and each is refused to whoever must not see it (no session: the login form; another role: 403; another owner's or
tenant's data: never on the page, whatever the URL says)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest

from harness import ENROLL, OPERATOR, OTHER_TENANT, TENANT, auth, npy, sha, start_coordinator

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts" / "web"
"""One screenshot per page, kept after the run (gitignored) for a person to look at."""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """A coordinator with two owners (alice: two cars, bob: one), an inference job for each of two tenants and a
    training job of one."""
    proc = start_coordinator(tmp_path_factory.mktemp("coord"))
    api = httpx.Client(base_url=proc.url, timeout=30)
    cars = {}
    for name in ("alice-car-1", "alice-car-2", "bob-car-1"):
        r = api.post("/v1/vehicles/enroll", json={"enrollment_token": ENROLL, "name": name, "hardware": "ai4"})
        assert r.status_code == 201, r.text
        cars[name] = r.json()
    owners = {}
    for owner in ("alice", "bob"):
        r = api.post("/v1/owners", json={"name": owner}, headers=auth(OPERATOR))
        assert r.status_code == 201, r.text
        owners[owner] = r.json()["token"]
        for name, car in cars.items():
            if name.startswith(owner):
                assert api.post(f"/v1/owners/{owner}/cars", json={"vehicle_id": car["vehicle_id"]},
                                headers=auth(OPERATOR)).status_code == 200
    jobs = {}
    for tenant, token in (("acme", TENANT), ("other", OTHER_TENANT)):
        data = npy(np.zeros((20, 40), np.float32))
        assert api.put(f"/v1/artifacts/{sha(data)}", content=data, headers=auth(token)).status_code in (200, 201)
        r = api.post("/v1/jobs", json={"model": "mnist1d-cnn", "inputs": sha(data), "input_format": "npy",
                                       "name": f"{tenant}-embeddings"}, headers=auth(token))
        assert r.status_code == 201, r.text
        jobs[tenant] = r.json()["job_id"]
    body = {"model": "mnist1d-cnn", "name": "acme-training", "strategy": "fedavg", "rounds": 2,
            "data": {"dataset": "mnist1d", "num_vehicles": 2, "alpha": 1.0, "num_samples": 300},
            "settings": {"local": {"steps": 2, "batch_size": 16},
                         "rounds": {"clients_per_round": 1, "over_selection": 1.0, "deadline_s": 60}}}
    r = api.post("/v1/train/jobs", json=body, headers=auth(TENANT))
    assert r.status_code == 201, r.text
    jobs["training"] = r.json()["job_id"]
    yield {"proc": proc, "url": proc.url, "api": api, "cars": cars, "owners": owners, "jobs": jobs}
    api.close()
    proc.stop()
    assert "Traceback" not in proc.log(), proc.log()[-3000:]


@pytest.fixture(scope="module")
def browser():
    assert CHROMIUM.exists() or shutil.which("chromium"), \
        "these tests drive Debian's chromium: `make chromium` (or apt-get install chromium) installs it"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()


class Visitor:
    """A browser context that may reach 127.0.0.1 only (every other request is aborted and remembered)."""

    def __init__(self, browser, url: str) -> None:
        self.url = url
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.blocked: list[str] = []
        self.errors: list[str] = []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)

    def _route(self, route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            self.blocked.append(route.request.url)
            route.abort()

    def login(self, token: str) -> None:
        self.page.goto(self.url + "/login")
        self.page.fill("#token", token)
        self.page.click("#login button[type=submit]")
        self.page.wait_for_load_state()

    def goto(self, path: str):
        return self.page.goto(self.url + path)

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def cookie(self) -> dict:
        (cookie,) = [c for c in self.context.cookies() if c["name"] == "fleetgrid_session"]
        return cookie

    def clean(self) -> None:
        assert not self.blocked, self.blocked
        assert not self.errors, self.errors
        self.context.close()


def test_the_login_form_refuses_a_bad_token_and_the_root_leads_to_it(fleet, browser):
    v = Visitor(browser, fleet["url"])
    v.goto("/")
    assert urlsplit(v.page.url).path == "/login"
    v.shot("login")
    v.login("fgt_not-a-real-token")
    assert urlsplit(v.page.url).path == "/login"
    assert "not valid here" in v.page.inner_text("[role=alert]")
    assert not [c for c in v.context.cookies() if c["name"] == "fleetgrid_session"]
    v.errors = [e for e in v.errors if "401" not in e]  # the refused sign-in's status, as the console reports it
    v.clean()


def test_the_operator_sees_the_fleet_chart_and_every_tenants_jobs(fleet, browser):
    v = Visitor(browser, fleet["url"])
    v.login(OPERATOR)
    assert urlsplit(v.page.url).path == "/dashboard/fleet"
    cookie = v.cookie()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and not cookie["secure"]  # plain http here
    assert OPERATOR not in cookie["value"]  # a signed session, never the token
    v.page.wait_for_selector("body[data-charts-ready=true]")
    assert v.page.locator("#state-chart[data-drawn=true] canvas").count() == 1  # uPlot drew the history
    assert int(v.page.inner_text("#counts .tile >> nth=0").split()[0]) == 3
    jobs = v.page.inner_text("table.jobs")
    assert "acme-embeddings" in jobs and "other-embeddings" in jobs
    # The training job's version 0 is scored on the held-out set as its driver starts: its accuracy is listed.
    for _ in range(300):
        if "accuracy by version: v0 0." in v.page.inner_text("tr:has-text('acme-training')"):
            break
        v.page.wait_for_timeout(200)
        v.goto("/dashboard/fleet")
    else:
        raise AssertionError("the training job's version-0 accuracy never appeared on the fleet page")
    v.shot("operator-fleet")
    v.clean()


def test_the_operator_usage_page_lists_owners_and_pages_the_cars(fleet, browser):
    v = Visitor(browser, fleet["url"])
    v.login(OPERATOR)
    v.goto("/dashboard/usage?page=99")  # past the last page: the last page
    assert "page 1 of 1" in v.page.inner_text("main")
    v.shot("operator-usage")
    v.clean()


def test_an_owner_sees_only_their_cars_and_no_operator_page(fleet, browser):
    v = Visitor(browser, fleet["url"])
    v.login(fleet["owners"]["alice"])
    assert urlsplit(v.page.url).path == "/dashboard/owner"
    cars = v.page.inner_text("#cars")
    assert "alice-car-1" in cars and "alice-car-2" in cars and "bob-car-1" not in cars
    assert len(v.page.locator("#months tbody tr").all()) == 6
    v.shot("owner")
    v.goto("/dashboard/owner?owner=bob&name=bob")  # the URL names no one: the session does
    assert "bob-car-1" not in v.page.inner_text("main")
    for path in ("/dashboard/fleet", "/dashboard/usage", "/dashboard/jobs"):
        assert v.goto(path).status == 403, path
        assert "bob" not in v.page.inner_text("main") and "acme" not in v.page.inner_text("main")
    v.errors = [e for e in v.errors if "403" not in e]
    v.clean()


def test_a_tenant_sees_only_their_jobs_and_no_owner_or_operator_page(fleet, browser):
    v = Visitor(browser, fleet["url"])
    v.login(TENANT)
    assert urlsplit(v.page.url).path == "/dashboard/jobs"
    jobs = v.page.inner_text("main")
    assert "acme-embeddings" in jobs and "other-embeddings" not in jobs
    v.shot("tenant-jobs")
    for path in ("/dashboard/fleet", "/dashboard/usage", "/dashboard/owner"):
        assert v.goto(path).status == 403, path
        assert "other-embeddings" not in v.page.inner_text("main")
    v.errors = [e for e in v.errors if "403" not in e]
    v.clean()


@pytest.mark.parametrize("path", ["/dashboard/fleet", "/dashboard/usage", "/dashboard/owner", "/dashboard/jobs"])
def test_no_session_or_a_forged_one_gets_the_login_form(fleet, path):
    with httpx.Client(base_url=fleet["url"]) as client:
        r = client.get(path)
        assert r.status_code == 303 and r.headers["location"].startswith("/login")
        client.cookies.set("fleetgrid_session", '["operator","operator","x"].forged.sig')
        r = client.get(path)
        assert r.status_code == 303 and r.headers["location"].startswith("/login")
        r = client.post("/dashboard/owner/policy", data={"min_soc_percent": "0"})
        assert r.status_code == 303 and r.headers["location"].startswith("/login")


def test_a_sign_out_ends_the_session(fleet, browser):
    v = Visitor(browser, fleet["url"])
    v.login(TENANT)
    v.page.click("header .logout button")
    v.page.wait_for_load_state()
    assert urlsplit(v.page.url).path == "/login"
    v.goto("/dashboard/jobs")
    assert urlsplit(v.page.url).path == "/login"
    v.clean()


def test_the_policy_form_says_what_is_wrong_and_needs_its_form_token(fleet, browser):
    v = Visitor(browser, fleet["url"])
    v.login(fleet["owners"]["bob"])
    v.page.fill("#min_soc_percent", "150")
    v.page.fill("#hours_start", "7")
    v.page.fill("#hours_end", "7")
    v.page.click("#policy button[type=submit]")
    v.page.wait_for_load_state()
    alerts = v.page.inner_text("#policy")
    assert "minimum charge (%) 150 is out of range; accepted: a whole number from 0 to 100" in alerts
    v.shot("owner-policy-errors")
    assert fleet["api"].get("/v1/owner", headers=auth(fleet["owners"]["bob"])).status_code == 200
    # Nothing was stored: the next heartbeat of bob's car carries no policy.
    bob_car = fleet["cars"]["bob-car-1"]["credential"]
    beat = fleet["api"].post("/v1/vehicles/heartbeat", json={"drive": "parked", "soc": 0.5, "network": "wifi",
                                                             "plugged_in": False, "eligible": True},
                             headers=auth(bob_car))
    assert beat.status_code == 200 and "policy" not in beat.json(), beat.text
    # Without the form token (a cross-site form, or a forged request with the cookie): refused.
    with httpx.Client(base_url=fleet["url"]) as client:
        client.cookies.set("fleetgrid_session", v.cookie()["value"])
        r = client.post("/dashboard/owner/policy", data={"min_soc_percent": "30", "hours_start": "0",
                                                         "hours_end": "24", "cellular_cap_mib": "100"})
        assert r.status_code == 403 and "security token" in r.text
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', client.get("/dashboard/owner").text)[1]
        r = client.post("/dashboard/owner/policy", data={"csrf": csrf, "min_soc_percent": "30", "hours_start": "22",
                                                         "hours_end": "7", "cellular_cap_mib": "100",
                                                         "opt_in": "on"})
        assert r.status_code == 303, r.text
    beat = fleet["api"].post("/v1/vehicles/heartbeat", json={"drive": "parked", "soc": 0.5, "network": "wifi",
                                                             "plugged_in": False, "eligible": True},
                             headers=auth(bob_car))
    assert beat.json()["policy"] == {"opt_in": True, "min_soc": 0.3, "plugged_in_only": False,
                                     "allowed_hours": [22, 7], "monthly_cellular_cap_bytes": 100 * 1024 * 1024,
                                     "allow_cellular": False}
    # Alice's cars are untouched by bob's policy.
    alice_car = fleet["cars"]["alice-car-1"]["credential"]
    beat = fleet["api"].post("/v1/vehicles/heartbeat", json={"drive": "parked", "soc": 0.5, "network": "wifi",
                                                             "plugged_in": False, "eligible": True},
                             headers=auth(alice_car))
    assert "policy" not in beat.json()
    v.errors = [e for e in v.errors if "400" not in e]
    v.clean()
