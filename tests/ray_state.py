"""Ray's own records of the session cluster's actors, through its state API."""

from __future__ import annotations

from typing import Any


def list_actors(*filters: tuple[str, str, str]) -> list[Any]:
    """Every actor of the session's Ray that matches ``filters`` (``("class_name", "=",
    "ClientHost")``), alive or dead.

    The state API is served by Ray's dashboard (Ray itself retries for about 40 s while it
    starts). A Ray started while another one on the machine holds the dashboard's port 8265
    runs without one: that is said plainly instead of as Ray's "Could not read 'dashboard'
    from GCS"."""
    import ray
    from ray.util import state

    address = ray.get_runtime_context().gcs_address
    try:
        return state.list_actors(address=address, filters=list(filters), limit=10_000)
    except ConnectionError as error:
        raise AssertionError(
            "Ray's state API does not answer: the session's Ray has no dashboard (was port "
            f"8265 taken by another Ray on this machine when it started?): {error}"
        ) from error
