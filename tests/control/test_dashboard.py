"""The dashboard in a real headless Chromium against a live service: jobs, devices, loss curve, events, logs, token."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from tests.conftest import ROOT, WORKERS
from tests.control.browser import chromium_path
from tests.control.conftest import LiveServer

API = "/api/v1"
SCREENSHOT = ROOT / "benchmarks" / "results" / "dashboard.png"
LOSSES = [2.3 * 0.93**i + 0.05 * (i % 3) for i in range(40)]

pytestmark = pytest.mark.slow  # a browser start and a live service: several seconds
# expect() waits 5 s by default, whatever the page's timeout: too short on a loaded 2-core machine.
TIMEOUT_MS = 30_000
expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Debian Chromium driven by Playwright (installed with apt on first use)."""
    path = chromium_path()  # fails with one clear line when Chromium cannot be had
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[tuple[Page, list[str]]]:
    """A fresh page (own localStorage) and the console errors and page errors it collects."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type == "error":
            errors.append(f"console: {msg.text}")

    pg.on("console", on_console)
    pg.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    yield pg, errors
    context.close()


def submit(client: Any, name: str, gpus: int, priority: int = 0) -> dict:
    spec = {
        "name": name,
        "entrypoint": f"{sys.executable} {WORKERS / 'sleeper.py'}",
        "workdir": str(ROOT),
        "resources": {"gpus": gpus},
        "priority": priority,
        "env": {"OMP_NUM_THREADS": "1"},
    }
    resp = client.post(f"{API}/jobs", json=spec)
    assert resp.status_code == 201, resp.text
    return resp.json()


def wait_for(client: Any, job_id: int, check: Any, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"{API}/jobs/{job_id}").json()
        if check(job):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.1)


def test_dashboard_shows_jobs_devices_and_a_selected_jobs_curve_events_and_logs(
    make_server: Any, page: tuple[Page, list[str]]
) -> None:
    server: LiveServer = make_server(devices=2)
    alice = server.client(server.user("alice"))
    bob = server.client(server.user("bob"))
    running = submit(alice, "resnet-train", gpus=1, priority=5)
    wait_for(alice, running["id"], lambda j: j["state"] == "RUNNING")
    waiting = submit(bob, "bert-finetune", gpus=2)  # one device is free, it needs two
    dropped = submit(bob, "sweep-lr", gpus=2)
    assert bob.post(f"{API}/jobs/{dropped['id']}/cancel").status_code == 200
    records = [{"step": 10 * i, "values": {"loss": loss, "accuracy": 0.1 + 0.02 * i}} for i, loss in enumerate(LOSSES)]
    assert alice.post(f"{API}/jobs/{running['id']}/metrics", json={"records": records}).status_code == 204
    wait_for(alice, running["id"], lambda j: "up 0" in alice.get(f"{API}/jobs/{j['id']}/logs").text)
    assert server.client().get(f"{API}/jobs/{waiting['id']}").json()["state"] == "PENDING"

    pg, errors = page
    pg.goto(f"{server.url}/?token={server.token}")

    # The token left the address bar; the header sums up the cluster.
    assert "token" not in pg.url
    expect(pg.locator("#sum-policy")).to_have_text("priority")
    expect(pg.locator("#sum-devices")).to_have_text("1 / 2")
    expect(pg.locator("#sum-running")).to_have_text("1")
    expect(pg.locator("#sum-pending")).to_have_text("1")
    expect(pg.locator("#whoami")).to_contain_text("admin")

    # Every job in the table, by name and state badge.
    rows = pg.locator("#jobs tbody tr")
    expect(rows).to_have_count(3)
    for job, state in [(running, "RUNNING"), (waiting, "PENDING"), (dropped, "CANCELLED")]:
        row = pg.locator(f"#jobs tbody tr[data-job-id='{job['id']}']")
        expect(row).to_contain_text(job["name"])
        expect(row.locator(".badge")).to_have_text(state)
    expect(pg.locator(f"#jobs tbody tr[data-job-id='{running['id']}']")).to_contain_text("local:0")
    expect(pg.locator(f"#jobs tbody tr[data-job-id='{waiting['id']}']")).to_contain_text("needs 2")

    # The device grid: the running job's name on its device, the other one free, a legend.
    busy = pg.locator(f"#devices .cell[data-job-id='{running['id']}']")
    expect(busy).to_have_count(1)
    expect(busy).to_contain_text("resnet-train")
    expect(pg.locator("#devices .cell.free")).to_have_count(1)
    expect(pg.locator("#legend")).to_contain_text("resnet-train")

    # A job without metrics says so; its timeline starts with the submission.
    pg.locator(f"#jobs tbody tr[data-job-id='{waiting['id']}']").click()
    expect(pg.locator("#d-title")).to_contain_text("bert-finetune")
    expect(pg.locator("#charts")).to_contain_text("no metrics yet")
    expect(pg.locator("#events")).to_contain_text("submitted")

    # The job with metrics: one curve per key with a point per report, its events and its log.
    pg.locator(f"#jobs tbody tr[data-job-id='{running['id']}']").click()
    expect(pg.locator("#d-title")).to_contain_text("resnet-train")
    loss = pg.locator("#charts svg[data-metric='loss']")
    expect(loss.locator("circle.point")).to_have_count(len(LOSSES))
    path = loss.locator("path.line").get_attribute("d") or ""
    assert path.startswith("M") and path.count("L") == len(LOSSES) - 1, path
    expect(pg.locator("#charts svg[data-metric='accuracy']")).to_have_count(1)
    expect(loss).to_contain_text("step")  # the x-axis label
    expect(pg.locator("#events li")).to_have_count(2)
    expect(pg.locator("#events li").first).to_contain_text("submitted")
    expect(pg.locator("#events li").nth(1)).to_contain_text("RUNNING")
    expect(pg.locator("#log")).to_contain_text("[rank 0] up 0")
    expect(pg.locator(f"#devices .cell.sel[data-job-id='{running['id']}']")).to_have_count(1)

    # It keeps refreshing: a job submitted now shows up without a reload.
    late = submit(bob, "late-arrival", gpus=2, priority=-1)
    expect(pg.locator(f"#jobs tbody tr[data-job-id='{late['id']}']")).to_contain_text("late-arrival")
    expect(pg.locator("#sum-pending")).to_have_text("2")

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(SCREENSHOT), full_page=True)

    # What a job reports is shown as text, never as markup (metric names are free-form strings).
    evil = "<img src=x onerror=window.pwned=1>"
    resp = bob.post(f"{API}/jobs/{waiting['id']}/metrics", json={"records": [{"step": 1, "values": {evil: 1.0}}]})
    assert resp.status_code == 204
    pg.locator(f"#jobs tbody tr[data-job-id='{waiting['id']}']").click()
    expect(pg.locator("#charts .chart .title b")).to_have_text(evil)
    assert pg.locator("#detail img").count() == 0
    assert pg.evaluate("window.pwned") is None
    assert errors == []


def test_a_wrong_token_shows_the_token_form_with_the_error_and_a_good_one_opens_the_dashboard(
    make_server: Any, page: tuple[Page, list[str]]
) -> None:
    server: LiveServer = make_server(devices=2)
    pg, errors = page
    pg.goto(f"{server.url}/?token=not-a-token")

    assert "token" not in pg.url
    expect(pg.locator("#login")).to_be_visible()
    expect(pg.locator("#login-error")).to_contain_text("invalid token")
    expect(pg.locator("#app")).to_be_hidden()
    assert pg.evaluate("localStorage.getItem('corral.token')") is None  # a bad token is not kept

    pg.locator("#token-input").fill(server.token)
    pg.locator("#login-form button").click()
    expect(pg.locator("#app")).to_be_visible()
    expect(pg.locator("#login")).to_be_hidden()
    expect(pg.locator("#sum-devices")).to_have_text("0 / 2")
    expect(pg.locator("#jobs-empty")).to_contain_text("No jobs yet")

    # The token is remembered: a reload opens the dashboard directly.
    pg.reload()
    expect(pg.locator("#sum-devices")).to_have_text("0 / 2")
    expect(pg.locator("#login")).to_be_hidden()

    # Chromium itself reports the refused request as a failed resource load; nothing else may fail.
    assert [e for e in errors if "status of 401" not in e] == []
