"""Fixtures of the data loader tests: a Hugging Face hub stand-in on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import huggingface_hub.constants
import pytest

from tests.ray_module.data.fake_hub import fake_hub

HubRepos = dict[str, dict[str, str]]


@pytest.fixture
def stand_in_hub(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Callable[[HubRepos], list[str]]]:
    """Call with {repo id: {file: text}}: the hub library then talks to a loopback hub that
    serves those repositories, with an empty cache. Returns the requests it receives."""
    with ExitStack() as stack:

        def serve(repos: HubRepos) -> list[str]:
            endpoint, asked = stack.enter_context(fake_hub(repos))
            # The hub library builds both from HF_ENDPOINT at import.
            monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
            monkeypatch.setattr(
                huggingface_hub.constants,
                "HUGGINGFACE_CO_URL_TEMPLATE",
                endpoint + "/{repo_id}/resolve/{revision}/{filename}",
            )
            monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
            return asked

        yield serve
