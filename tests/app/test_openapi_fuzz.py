"""Property-based fuzzing of the whole OpenAPI schema (schemathesis) against the real app.

Every operation in `/openapi.json` is called with generated inputs (valid and invalid) as the
admin, in-process over ASGI, and each response must: not be a 5xx, carry a status that the
operation documents, and match the documented schema and media type. Seeded and bounded
(about 1,400 requests over 23 operations), so a run is repeatable and takes seconds.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python.asgi import get_client, shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.main import create_app
from auth.models import User
from core.db import make_session_factory
from tests.conftest import bearer, clear_tables, make_settings

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 20
SEED = 20260511
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    response_schema_conformance,
    content_type_conformance,
]
# Statuses that /auth routes (app/routes/auth.py, owned apart from this suite) answer but do
# not yet declare in `responses=`. Only these exact statuses skip the status check; every
# other check still runs on them. Remove an entry once its route documents the status.
KNOWN_UNDOCUMENTED: dict[str, set[int]] = {}


# The document the app serves at /openapi.json (built without a database). The cases are sent
# in-process over ASGI to `fuzz_app` below: the same app on the test database.
schema = schemathesis.openapi.from_dict(
    create_app(dispatch=False).openapi(),
    config=schemathesis.Config.from_dict(
        {"seed": SEED, "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True}}
    ),
)


@pytest.fixture(scope="module")
def fuzz_app(database_url: str) -> Iterator[object]:
    clear_tables(database_url)
    app = create_app(make_settings(database_url), dispatch=False, run_migrations=False)
    with get_client(app):  # starts the app's lifespan, which schemathesis's calls then share
        yield app
    shutdown_lifespans()
    clear_tables(database_url)


@pytest.fixture(scope="module")
def admin_bearer(fuzz_app) -> dict[str, str]:
    """The bootstrap admin, created by the app's lifespan."""
    with make_session_factory(fuzz_app.state.engine)() as session:  # type: ignore[attr-defined]
        admin = session.query(User).filter_by(username="admin").one()
        session.expunge(admin)
    return bearer(admin, fuzz_app.state.settings)  # type: ignore[attr-defined]


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_answers_as_documented(
    case, fuzz_app: object, admin_bearer: dict[str, str]
) -> None:
    response = case.call(app=fuzz_app, headers=admin_bearer)
    checks = CHECKS
    if response.status_code in KNOWN_UNDOCUMENTED.get(case.operation.label, set()):
        checks = [check for check in CHECKS if check is not status_code_conformance]
    case.validate_response(response, checks=checks, headers=admin_bearer)
