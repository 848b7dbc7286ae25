"""The dashboard in a real browser (Debian's Chromium, driven by Playwright) against the real
launcher: log in through the page, watch a real job's loss chart gain points without a
reload, open a node page, cancel a running job from its page and see the refund, and find
another user's job answering 404. A screenshot of the job page goes to var/test-artifacts."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import httpx
import pytest

from tests.agent.gateway_process import OWNER, OWNER_PASSWORD, Gateway, running_gateway
from tests.job_specs import small_split_job
from tests.paths import REPO_ROOT as ROOT

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "var" / "test-artifacts"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory):
    with running_gateway(tmp_path_factory.mktemp("dashboard")) as running:
        yield running


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: `make test` installs Debian's chromium package")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            yield chromium
        finally:
            chromium.close()


def log_in(page, gateway: Gateway, username: str, password: str) -> None:
    page.goto(gateway.base + "/")  # the root sends a browser to the dashboard
    assert page.url.endswith("/dashboard")
    page.wait_for_selector("form#login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_selector("#jobs")


def chart_points(page, name: str) -> int:
    chart = page.query_selector(f'[data-chart="{name}"]')
    return int(chart.get_attribute("data-points") or 0) if chart else 0


def test_the_dashboard_shows_a_job_live_cancels_one_and_hides_others_jobs(
    gateway: Gateway, browser
) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    log_in(page, gateway, "admin", "admin-change-me")
    assert "token" not in page.url  # never in a URL

    job = gateway.as_admin("POST", "/jobs/submit", json=small_split_job(4, 0.15, max_samples=400))
    page.wait_for_selector(f'tr[data-job="{job["id"]}"]', timeout=30_000)  # the list updates
    page.click(f'tr[data-job="{job["id"]}"] a')
    page.wait_for_selector("#job-status")
    page.wait_for_function(
        "() => +(document.querySelector('[data-chart=\"loss\"]')?.dataset.points || 0) >= 3",
        timeout=120_000,
    )
    first = chart_points(page, "loss")
    page.wait_for_function(
        f"() => +(document.querySelector('[data-chart=\"loss\"]')?.dataset.points || 0) > {first}",
        timeout=60_000,
    )  # more points, no reload
    page.wait_for_function(
        "() => document.querySelector('#job-status').textContent === 'succeeded'", timeout=120_000
    )
    assert "placed on node" in page.inner_text("#logs")
    page.screenshot(path=str(ARTIFACTS / "dashboard-job.png"), full_page=True)

    page.goto(gateway.base + "/dashboard#/nodes/1")
    page.wait_for_selector("#node-info")
    page.wait_for_function(
        "() => /jobs served: [1-9]/.test(document.querySelector('#node-info').textContent)"
    )

    long = gateway.as_admin("POST", "/jobs/submit", json=small_split_job(200, 0.2, max_samples=400))
    page.goto(gateway.base + f"/dashboard#/jobs/{long['id']}")
    page.wait_for_function(
        "() => document.querySelector('#job-status')?.textContent === 'running'", timeout=120_000
    )
    page.wait_for_function(
        "() => +(document.querySelector('[data-chart=\"loss\"]')?.dataset.points || 0) >= 1",
        timeout=120_000,
    )
    page.click("#cancel")
    page.wait_for_function(
        "() => document.querySelector('#job-status').textContent === 'cancelled'", timeout=120_000
    )
    page.goto(gateway.base + "/dashboard#/tokens")
    page.wait_for_selector("#history tbody tr")
    refunds = [
        row for row in page.query_selector_all("#history tbody tr")
        if "refund" in row.inner_text() and f"\t{long['id']}\t" in f"\t{row.inner_text()}\t"
    ]  # fmt: skip
    assert refunds, page.inner_text("#history")
    assert gateway.as_admin("GET", "/tokens/balance/me")["held"] == 0  # every hold released
    shown = re.search(r"\bheld (\S+) ·", page.inner_text("#balance"))
    assert shown and shown[1] == "0", page.inner_text("#balance")  # not "held 0.18..."

    # Another user: the admin's job page answers 404.
    page.click("#logout")
    page.wait_for_selector("form#login")
    page.fill("input[name=username]", OWNER)
    page.fill("input[name=password]", OWNER_PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_function(
        f"() => document.querySelector('#who').textContent.startsWith('{OWNER}')"
    )
    page.goto(gateway.base + f"/dashboard#/jobs/{job['id']}")
    page.wait_for_selector("#not-found")
    assert not page.query_selector("#job-status")
    assert errors == [], errors


def test_the_page_itself_holds_no_data_and_is_locked_down(gateway: Gateway) -> None:
    page = httpx.get(gateway.base + "/dashboard")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "admin" not in page.text  # no data in the page: it comes from the API, per caller
    script = httpx.get(gateway.base + "/dashboard/static/app.js")
    assert script.status_code == 200 and "sessionStorage" in script.text
    licence = httpx.get(gateway.base + "/dashboard/static/vendor/LICENSE.uPlot.txt")
    assert licence.status_code == 200 and "MIT" in licence.text


def test_the_api_docs_load_offline_and_keep_the_token_out_of_storage(
    gateway: Gateway, browser
) -> None:
    """Issue 23 (1), issue 24 (13): with every address but the gateway's blocked, Swagger UI
    lists the API, authorizes through /auth/token (the login's Origin check passes: same
    site) and keeps the token only in memory; ReDoc renders the same schema."""
    context = browser.new_context()
    blocked: list[str] = []

    def only_the_gateway(route) -> None:
        if route.request.url.startswith(gateway.base + "/"):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_gateway)
    problems: list[str] = []
    page = context.new_page()
    page.on("pageerror", lambda error: problems.append(f"error: {error}"))
    page.goto(gateway.base + "/docs")
    page.wait_for_selector(".opblock", timeout=30_000)
    assert len(page.query_selector_all(".opblock")) > 30  # every operation, offline
    page.click("button.authorize")
    page.fill("#oauth_username", "admin")
    page.fill("#oauth_password", "admin-change-me")
    page.click(".auth-btn-wrapper button.authorize")
    page.wait_for_function(
        "() => !!window.ui.authSelectors.authorized().toJS().OAuth2PasswordBearer?.token"
    )
    assert page.evaluate("localStorage.length") == 0
    assert page.evaluate("sessionStorage.length") == 0

    redoc = context.new_page()
    redoc.on("pageerror", lambda error: problems.append(f"redoc error: {error}"))
    redoc.goto(gateway.base + "/redoc")
    redoc.wait_for_selector('text="/jobs/submit"', timeout=30_000)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "api-docs.png"))
    assert blocked == [] and problems == [], (blocked, problems)
    context.close()


def succeeded(gateway: Gateway, spec: dict) -> dict:
    """Submit as the admin and wait (bounded) for the job to succeed."""
    job = gateway.as_admin("POST", "/jobs/submit", json=spec)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        job = gateway.as_admin("GET", f"/jobs/{job['id']}")
        if job["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(1)
    assert job["status"] == "succeeded", job["status_reason"]
    return job


def test_the_run_page_summarises_groups_charts_shows_results_and_compares_runs(
    gateway: Gateway, browser
) -> None:
    """Issue 23 (2): summary with durations, latest and best; training and validation loss
    on one chart; constants as figures; a full progress bar once done; a validate job's
    per-class table and confusion matrix; an infer job's preview and downloads; two runs'
    curves on one page."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    first = succeeded(gateway, small_split_job(3, max_samples=400))
    second = succeeded(gateway, small_split_job(2, max_samples=400))
    side = {"training_config": {"loader": {"cpu_cores": 0.5, "memory": 0.5}},
            "requirements": {"gpu": 0, "cpu_cores": 0.5, "memory": 0.5}}  # fmt: skip
    used = {
        task: succeeded(
            gateway,
            {
                **side,
                "task": task,
                "model_config": {"type": "classifier", "model_name": f"job:{first['id']}"},
                "data_config": {
                    "data_source": "builtin",
                    "dataset_name": "digits",
                    "max_samples": 200,
                },
            },
        )
        for task in ("validate", "infer")
    }
    page = browser.new_page(viewport={"width": 1280, "height": 1600})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    log_in(page, gateway, "admin", "admin-change-me")

    def open_job(job_id: int) -> None:
        page.goto(gateway.base + f"/dashboard#/jobs/{job_id}")
        page.wait_for_function(
            f"() => document.querySelector('#page-title')?.textContent.startsWith('Job {job_id}:')"
            " && document.querySelector('#job-status')?.textContent === 'succeeded'"
        )

    open_job(first["id"])
    # The page draws points as they arrive: the loss chart gains its validation series once
    # the epochs' points are in.
    page.wait_for_selector(
        '#charts-training [data-chart="loss"][data-series="loss,validation_loss"]'
    )
    assert page.query_selector('#charts-system [data-chart="samples_per_s"]')
    assert page.get_attribute("#progress", "data-progress") == "100"
    assert page.query_selector('#figures tr[data-key="epoch_samples"]')  # a constant: a number
    assert not page.query_selector('[data-chart="epoch_samples"]')
    best = page.inner_text('#best tr[data-key="validation_accuracy"]').split("\t")
    assert best[0] == "validation_accuracy" and float(best[2]) >= float(best[1]) > 0
    for key in ("queued", "starting", "running"):
        shown = page.inner_text(f'#summary-table tr[data-key="{key}"] td')
        assert re.fullmatch(r"[0-9.]+ s|\d+ min \d+ s", shown), (key, shown)
    page.screenshot(path=str(ARTIFACTS / "run-train.png"), full_page=True)

    open_job(used["validate"]["id"])
    page.wait_for_selector("#results #confusion")
    assert len(page.query_selector_all("#per-class tbody tr")) == 10
    assert len(page.query_selector_all("#confusion tbody tr")) == 10
    assert page.query_selector("#download-json")
    page.screenshot(path=str(ARTIFACTS / "run-validate.png"), full_page=True)

    open_job(used["infer"]["id"])
    page.wait_for_selector("#results #preview tbody tr")
    assert len(page.query_selector_all("#preview tbody tr")) == 20
    assert page.query_selector("#download-jsonl") and page.query_selector("#download-parquet")
    page.screenshot(path=str(ARTIFACTS / "run-infer.png"), full_page=True)

    page.goto(gateway.base + "/dashboard#/jobs")
    for job in (first, second):
        page.wait_for_selector(f'input[data-tick="{job["id"]}"]').check()
    page.click("#compare")
    # Each run's points arrive on their own: the chart holds both runs once both are in.
    both = f"#{first['id']} loss,#{second['id']} loss"
    page.wait_for_selector(f'#compare-charts [data-chart="loss"][data-series="{both}"]')
    page.screenshot(path=str(ARTIFACTS / "run-compare.png"), full_page=True)
    assert errors == [], errors


def test_an_admin_runs_the_pool_from_the_nodes_and_system_pages(gateway: Gateway, browser) -> None:
    """Issue 23 (5): owners by name, earnings, only the actions a node's state allows (drain
    turns into undrain), a System page of tables and charts with the ledger's invariant, and
    a plain user told why there are no nodes for them instead of an empty table."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    log_in(page, gateway, "admin", "admin-change-me")
    node = gateway.as_admin("GET", "/nodes")["items"][0]
    owner = gateway.as_admin("GET", f"/nodes/{node['id']}")["owner_username"]
    assert owner and not owner.isdigit()
    page.goto(gateway.base + "/dashboard#/nodes")
    row = f'tr[data-node="{node["id"]}"]'
    page.wait_for_selector(f"{row} td.owner")
    assert page.inner_text(f"{row} td.owner") == owner
    float(page.inner_text(f"{row} td.earned"))  # a number of tokens
    buttons = [b.inner_text() for b in page.query_selector_all(f"{row} button")]
    assert buttons == ["Ban", "Drain", "New credential", "Retire"]  # approved: no "Approve"
    page.click(f'{row} button[data-action="Drain"]')
    page.wait_for_selector(f'{row} button[data-action="Undrain"]')
    assert gateway.as_admin("GET", f"/nodes/{node['id']}")["drained"] is True
    page.click(f'{row} button[data-action="Undrain"]')
    page.wait_for_selector(f'{row} button[data-action="Drain"]')
    assert gateway.as_admin("GET", f"/nodes/{node['id']}")["drained"] is False
    page.screenshot(path=str(ARTIFACTS / "nodes.png"), full_page=True)

    page.goto(gateway.base + "/dashboard#/system")
    page.wait_for_selector("#invariant")
    assert page.inner_text("#invariant").startswith("Every account balances")
    assert len(page.query_selector_all("#utilisation tr")) == 3
    assert page.query_selector('#jobs-by-status tr[data-key="succeeded"]')
    page.wait_for_selector('[data-chart="utilisation %"]')
    page.screenshot(path=str(ARTIFACTS / "system.png"), full_page=True)

    plain = {"username": "plain-user", "password": "plain-user-password-1"}
    gateway.as_admin("POST", "/auth/register", json=plain)
    page.click("#logout")
    page.wait_for_selector("form#login")
    page.fill("input[name=username]", "plain-user")
    page.fill("input[name=password]", "plain-user-password-1")
    page.click("button[type=submit]")
    page.wait_for_function("() => document.querySelector('#who').textContent.startsWith('plain')")
    page.goto(gateway.base + "/dashboard#/nodes")
    page.wait_for_selector("#nodes-forbidden")
    assert errors == [], errors
