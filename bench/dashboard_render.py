"""The dashboard's main page (the operator's fleet page) with a large fleet: time to first render in headless
Chromium (Debian's, through Playwright), served by a real coordinator (uvicorn on 127.0.0.1) over a store that
``bench/ledger.py`` filled. Every car reports a state and the last 24 hours of car-state samples are written first,
so the page has all it shows in production: the counts, the chart's 288 samples, the jobs.

Used by ``bench/ledger.py`` (it owns the store); ``measure_first_render`` returns the figures.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from pathlib import Path

import uvicorn

from fleetgrid.coordinator.app import Coordinator, create_app
from fleetgrid.coordinator.config import CoordinatorConfig
from fleetgrid.coordinator.store import SQLStore
from fleetgrid.localfleet import free_port

__all__ = ["CHROMIUM", "measure_first_render"]

CHROMIUM = Path("/usr/bin/chromium")
OPERATOR = "fgo_bench-operator-token"
_STATES = ("parked", "driving", "charging")


def _fleet_history(store: SQLStore, cars: int, now: float, seed: int = 2) -> None:
    """Every car reports a state now; a day of samples every five minutes."""
    rng = random.Random(seed)
    store.report_states([(f"v{i}", {"drive": rng.choice(_STATES), "soc": 0.6, "network": "wifi",
                                    "plugged_in": rng.random() < 0.3, "reasons": []}, rng.random() < 0.4, now)
                         for i in range(cars)])
    for k in range(288):
        eligible = int(cars * (0.3 + 0.2 * rng.random()))
        driving = int(cars * 0.1 * rng.random())
        store.record_car_states(now - 300.0 * (288 - k), {"eligible": eligible, "working": eligible // 3,
                                                          "driving": driving, "charging": cars // 10,
                                                          "parked": cars - eligible - driving - cars // 10},
                                keep_since=now - 86400.0)


def measure_first_render(store: SQLStore, data_dir: Path, cars: int, repeat: int) -> dict[str, float]:
    """Median time to first contentful paint and to the page's load event of /dashboard/fleet (ms), and the
    server's time to the first byte, over ``repeat`` loads by a signed-in operator."""
    from playwright.sync_api import sync_playwright

    config = CoordinatorConfig(data_dir=data_dir, operator_token=OPERATOR, sweep_interval_s=3600.0)
    coord = Coordinator(config, store=store)
    _fleet_history(store, cars, coord.clock.now())
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(coordinator=coord), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    paint_ms, load_ms, ttfb_ms = [], [], []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url + "/login")
            page.fill("#token", OPERATOR)
            page.click("#login button[type=submit]")
            page.wait_for_selector("body[data-charts-ready=true]")
            for _ in range(repeat):
                page.goto(url + "/dashboard/fleet")
                page.wait_for_selector("#state-chart[data-drawn=true]")
                timing = page.evaluate("""() => {
                    const nav = performance.getEntriesByType('navigation')[0];
                    const fcp = performance.getEntriesByName('first-contentful-paint')[0];
                    return {fcp: fcp ? fcp.startTime : null, load: nav.loadEventEnd, ttfb: nav.responseStart};
                }""")
                assert timing["fcp"] is not None, "the browser reported no first contentful paint"
                paint_ms.append(timing["fcp"])
                load_ms.append(timing["load"])
                ttfb_ms.append(timing["ttfb"])
            cars_shown = int(page.inner_text("#counts .tile >> nth=0").split()[0])
            assert cars_shown == cars, f"the page counts {cars_shown} cars, the store holds {cars}"
            browser.close()
    finally:
        server.should_exit = True
        thread.join(30)
    return {"dashboard_first_paint_ms": statistics.median(paint_ms), "dashboard_load_ms": statistics.median(load_ms),
            "dashboard_ttfb_ms": statistics.median(ttfb_ms)}
