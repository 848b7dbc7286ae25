"""/docs and /redoc load from this gateway alone, under the dashboard's locks (issue 24 item
13, issue 23 item 1). The browser test in test_dashboard_browser.py loads them with every
other address blocked; these check what the server sends."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_the_docs_pages_load_only_this_gateways_scripts_and_refuse_framing(
    client: TestClient, path: str
) -> None:
    page = client.get(path)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["x-frame-options"] == "DENY"
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources and all(source.startswith("/docs/") for source in sources), sources
    assert "<script>" not in page.text  # no inline script: the policy would refuse it
    for source in sources:
        asset = client.get(source)
        assert asset.status_code == 200, source
        assert len(asset.content) > 100, source


def test_the_schema_still_describes_the_api_and_hides_the_docs_pages(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "/jobs/submit" in paths
    assert not any(path.startswith(("/docs", "/redoc")) for path in paths)
