"""A job's usage as one typed value: stored and read back in the same shape, added up per
node and per stage, priced only on charged nodes, and refused when its figures are bad."""

from __future__ import annotations

from decimal import Decimal

import pytest

from compute.billing.usage import JobUsage
from ledger.pricing import Rates, ResourceSeconds
from protocol.events import UsageEvent

RATES = Rates(
    gpu_hour=Decimal(1), cpu_core_hour=Decimal(1), memory_gb_hour=Decimal(0), fee_percent=Decimal(0)
)
# As the dispatcher stores it today: figures, then the stage breakdown where stages exist.
STORED = {
    "3": {
        "gpu_seconds": 2.0,
        "cpu_core_seconds": 10.0,
        "memory_gb_seconds": 40.0,
        "stages": {
            "trainer": {"gpu_seconds": 2.0, "cpu_core_seconds": 4.0, "memory_gb_seconds": 16.0},
            "loader": {"gpu_seconds": 0.0, "cpu_core_seconds": 6.0, "memory_gb_seconds": 24.0},
        },
    },
    "1": {"gpu_seconds": 0.0, "cpu_core_seconds": 5.5, "memory_gb_seconds": 1.25},
}


def test_the_stored_column_reads_back_in_the_same_shape() -> None:
    column = JobUsage.from_column(STORED).to_column()
    assert column == STORED
    assert list(column) == ["3", "1"]  # node order kept
    assert list(column["3"]) == [*STORED["3"]]  # figures first, then stages
    assert list(column["3"]["stages"]) == ["trainer", "loader"]
    assert "stages" not in column["1"]  # single-stage work has no breakdown


def test_nothing_stored_is_no_usage() -> None:
    assert JobUsage.from_column(None) == JobUsage.from_column({}) == JobUsage()
    assert JobUsage().to_column() == {}
    assert JobUsage().of_node(1) == ResourceSeconds()


def test_plus_adds_per_node_and_per_stage_and_returns_a_new_value() -> None:
    before = JobUsage.from_column(STORED)
    after = before.plus(
        [
            UsageEvent(3, 1.0, 2.0, 3.0, stage="loader"),
            UsageEvent(2, 0.0, 7.0, 0.0),
            UsageEvent(3, 0.5, 0.5, 0.5, stage="trainer"),
        ]
    )
    assert before.to_column() == STORED  # unchanged
    column = after.to_column()
    assert column["3"]["gpu_seconds"] == 3.5
    assert column["3"]["cpu_core_seconds"] == 12.5
    assert column["3"]["stages"]["loader"] == {
        "gpu_seconds": 1.0,
        "cpu_core_seconds": 8.0,
        "memory_gb_seconds": 27.0,
    }
    assert column["3"]["stages"]["trainer"]["memory_gb_seconds"] == 16.5
    assert column["2"] == {"gpu_seconds": 0.0, "cpu_core_seconds": 7.0, "memory_gb_seconds": 0.0}
    assert column["1"] == STORED["1"]
    assert after.of_node(2) == ResourceSeconds(cpu_core_seconds=7.0)


def test_plus_accumulates_per_node() -> None:
    usage = JobUsage().plus(UsageEvent(n, 1, 2, 3) for n in (1, 2, 1))
    assert usage.to_column() == {
        "1": {"gpu_seconds": 2.0, "cpu_core_seconds": 4.0, "memory_gb_seconds": 6.0},
        "2": {"gpu_seconds": 1.0, "cpu_core_seconds": 2.0, "memory_gb_seconds": 3.0},
    }


def test_metered_charges_only_the_charged_nodes() -> None:
    half_an_hour = [UsageEvent(node, cpu_core_seconds=1800.0) for node in (1, 2)]
    usage = JobUsage().plus(half_an_hour)  # half a token on each node
    assert usage.metered(frozenset({1, 2}), RATES) == 1_000_000
    assert usage.metered(frozenset({2}), RATES) == 500_000
    assert usage.metered(frozenset({9}), RATES) == 0
    assert JobUsage().metered(frozenset({1}), RATES) == 0


def test_by_stage_sums_each_stage_over_the_nodes() -> None:
    usage = JobUsage.from_column(STORED).plus([UsageEvent(5, 1.0, 1.0, 1.0, stage="loader")])
    assert usage.by_stage() == {
        "trainer": ResourceSeconds(2.0, 4.0, 16.0),
        "loader": ResourceSeconds(1.0, 7.0, 25.0),
    }
    assert JobUsage().plus([UsageEvent(1, 1.0)]).by_stage() == {}


def test_by_node_gives_placed_nodes_without_usage_a_zero_entry() -> None:
    usage = JobUsage().plus([UsageEvent(1, cpu_core_seconds=3.0)])
    assert usage.by_node() == {1: ResourceSeconds(cpu_core_seconds=3.0)}
    assert usage.by_node([1, 4]) == {
        1: ResourceSeconds(cpu_core_seconds=3.0),  # its usage kept, not zeroed
        4: ResourceSeconds(),
    }


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_bad_stored_figures_are_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="cpu_core_seconds"):
        JobUsage.from_column({"1": {"cpu_core_seconds": bad}})
    in_a_stage = {"1": {"stages": {"loader": {"gpu_seconds": bad}}}}
    with pytest.raises(ValueError, match="gpu_seconds"):
        JobUsage.from_column(in_a_stage)


def test_bad_usage_events_are_refused() -> None:
    with pytest.raises(ValueError, match="memory_gb_seconds"):
        JobUsage().plus([UsageEvent(1, memory_gb_seconds=-0.5)])


def test_resource_seconds_add_field_by_field() -> None:
    total = ResourceSeconds(1.0, 2.0, 3.0) + ResourceSeconds(0.5, 0.25, 0.125)
    assert total == ResourceSeconds(1.5, 2.25, 3.125)
