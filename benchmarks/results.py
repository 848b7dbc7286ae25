"""A benchmark's headline figures, one line each, for `make bench` (`run_all.py`) to gather
into one table. A script prints its own tables as before and calls `report` for the figures
an aim is set on: against a baseline measured in the same run (a ratio), or on its own."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

MARK = "BENCH-RESULT "


@dataclass(frozen=True)
class Result:
    benchmark: str
    figure: str  # what was measured, in words
    value: float  # DistLM's figure
    unit: str = ""
    baseline: float | None = None  # the same measure of the baseline, in the same run
    baseline_name: str = ""
    aim: str = ""  # ">= 0.5" or "<= 100": on the ratio where there is a baseline, else on value

    @property
    def ratio(self) -> float | None:
        return self.value / self.baseline if self.baseline else None

    @property
    def aimed_at(self) -> float | None:
        return self.ratio if self.baseline else self.value

    def met(self) -> bool | None:
        if not self.aim:
            return None
        operator, _, bound = self.aim.partition(" ")
        measured = self.aimed_at
        if measured is None:
            return None
        return measured >= float(bound) if operator == ">=" else measured <= float(bound)


def report(
    benchmark: str,
    figure: str,
    value: float,
    *,
    unit: str = "",
    baseline: float | None = None,
    baseline_name: str = "",
    aim: str = "",
) -> None:
    result = Result(benchmark, figure, value, unit, baseline, baseline_name, aim)
    print(MARK + json.dumps(asdict(result)), flush=True)


def parse(line: str) -> Result | None:
    if not line.startswith(MARK):
        return None
    return Result(**json.loads(line.removeprefix(MARK)))
