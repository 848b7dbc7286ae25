"""GET /metrics: the Prometheus text format parses, its counters move by what happened, the
ledger gauge says the invariant holds, and only a scraper's token or an admin may read it."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SEED_JOB, Account


def scrape(client: TestClient, headers: dict) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_counters_move_by_what_happened_and_the_ledger_gauge_is_one(
    client: TestClient, admin: Account, user: Account
) -> None:
    before = scrape(client, admin.headers)
    for _ in range(3):
        assert client.get("/jobs", headers=user.headers).status_code == 200
    assert client.get("/jobs/999", headers=user.headers).status_code == 404
    job = client.post("/jobs/submit", headers=user.headers, json=SEED_JOB).json()
    held = client.get("/tokens/balance/me", headers=user.headers).json()["held"]
    assert client.post(f"/jobs/{job['id']}/cancel", headers=user.headers).status_code == 200
    after = scrape(client, admin.headers)

    requests = "distlm_http_requests_total"
    assert (
        value(after, requests, method="GET", route="/jobs", status="200")
        - value(before, requests, method="GET", route="/jobs", status="200")
        == 3
    )
    # A route template, never a path with an id in it.
    assert value(after, requests, method="GET", route="/jobs/{job_id}", status="404") >= 1
    assert not any("/jobs/999" in str(labels) for _, labels in after)
    assert (
        value(after, "distlm_jobs", status="cancelled")
        == value(before, "distlm_jobs", status="cancelled") + 1
    )
    refunded = value(after, "distlm_tokens_refunded_total") - value(
        before, "distlm_tokens_refunded_total"
    )
    assert refunded == pytest.approx(held)
    assert value(after, "distlm_ledger_invariant_ok") == 1
    assert value(after, "distlm_http_request_duration_seconds_count", method="GET",
                 route="/jobs") >= 3  # fmt: skip
    assert ("distlm_dispatcher_round_errors_total", ()) in after


def test_only_the_scrape_token_or_an_admin_reads_it(
    client: TestClient, admin: Account, user: Account
) -> None:
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=user.headers).status_code == 403
    client.app.state.settings = client.app.state.settings.model_copy(  # type: ignore[attr-defined]
        update={"metrics_token": "scrape-me-0123456789"}
    )
    scraper = {"Authorization": "Bearer scrape-me-0123456789"}
    assert client.get("/metrics", headers=scraper).status_code == 200
    wrong = client.get("/metrics", headers={"Authorization": "Bearer scrape-me-wrong"})
    assert wrong.status_code == 401
    assert client.get("/metrics", headers=admin.headers).status_code == 200
