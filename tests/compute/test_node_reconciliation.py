"""Node reconciliation, the dispatcher's pure policy for nodes: what the agents' view of a
machine changes in its row, and nothing when nothing changed (no write each round)."""

from __future__ import annotations

import datetime as dt

from compute.dispatch.node_reconciliation import node_changes
from compute.models import Node
from protocol.nodes import LiveNode

NOW = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)
FRESH = dt.timedelta(seconds=10)


def a_node(**values: object) -> Node:
    defaults: dict[str, object] = dict(
        id=1,
        gpu=0,
        cpu_cores=4.0,
        ray_node_id="abc",
        ray_alive=True,
        flag_reason="",
        last_heartbeat_at=NOW - dt.timedelta(seconds=2),
    )
    return Node(**{**defaults, **values})


def seen(cpus: float = 4, gpus: float = 0, alive: bool = True) -> LiveNode:
    return LiveNode(1, "abc", alive, cpus, gpus)


def test_a_node_as_it_was_changes_nothing() -> None:
    assert node_changes(a_node(), seen(), NOW, FRESH) == {}


def test_a_node_the_agents_no_longer_see_is_marked_dead_once() -> None:
    assert node_changes(a_node(), None, NOW, FRESH) == {"ray_alive": False}
    assert node_changes(a_node(ray_alive=False), None, NOW, FRESH) == {}


def test_a_heartbeat_is_written_once_an_interval_not_every_round() -> None:
    stale = a_node(last_heartbeat_at=NOW - dt.timedelta(seconds=11))
    assert node_changes(stale, seen(), NOW, FRESH) == {"last_heartbeat_at": NOW}
    assert node_changes(a_node(last_heartbeat_at=None), seen(), NOW, FRESH) == {
        "last_heartbeat_at": NOW
    }


def test_a_machine_offering_less_than_registered_is_flagged_and_unflagged() -> None:
    short = node_changes(a_node(gpu=1), seen(cpus=2), NOW, FRESH)
    assert short == {
        "flag_reason": "its machine offers 2 CPUs where 4 were registered; "
        "0 GPUs where 1 were registered"
    }
    flagged = a_node(flag_reason="its machine offers 2 CPUs where 4 were registered")
    assert node_changes(flagged, seen(), NOW, FRESH) == {"flag_reason": ""}


def test_a_ray_that_came_back_under_a_new_id_is_recorded() -> None:
    back = LiveNode(1, "def", True, 4, 0)
    assert node_changes(a_node(ray_alive=False), back, NOW, FRESH) == {
        "ray_node_id": "def",
        "ray_alive": True,
    }
