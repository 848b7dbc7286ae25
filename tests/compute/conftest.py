"""Fixtures of the dispatcher's money tests."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from auth.models import Role
from tests.conftest import register_node
from tests.scripted_ray import CPU_BOX


@pytest.fixture
def lent_pair(client: TestClient, make_account) -> tuple:
    owner = make_account("olivia", Role.NODE_OWNER)
    nodes = [register_node(client, owner.headers, f"m{i}", CPU_BOX)["id"] for i in (1, 2)]
    assert nodes == [1, 2]
    return owner, make_account("alice")
