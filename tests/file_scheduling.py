"""Hands whole test files to the xdist workers costliest first, so that they finish together.

xdist's own `loadfile` order is by number of tests, which sends the files of one or two long
tests (the separate hosts, the quickstart, the browser) last: one worker then runs them alone
while the other sits idle. Here each free worker takes the costliest file left, by the
seconds recorded in `tests/file_costs.json` (longest-processing-time-first), and holds no more
than one file beyond the one it runs, so no worker hoards work the other could start.

`pytest --record-file-costs` rewrites the JSON from the run (each file's setup, call and
teardown time) and prints when each worker ran out of work. A file the JSON does not know
counts one second per test.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import pytest

COSTS_PATH = Path(__file__).with_name("file_costs.json")
UNKNOWN_TEST_COST_S = 1.0


def read_costs() -> dict[str, float]:
    try:
        return {str(k): float(v) for k, v in json.loads(COSTS_PATH.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--record-file-costs",
        action="store_true",
        help="write each test file's seconds to tests/file_costs.json for the xdist order",
    )


try:
    from xdist.scheduler import LoadFileScheduling
except ImportError:  # pragma: no cover - xdist is in requirements-dev.txt
    LoadFileScheduling = None


if LoadFileScheduling is not None:

    class CostliestFileFirst(LoadFileScheduling):
        def __init__(self, config: pytest.Config, log=None) -> None:
            super().__init__(config, log)
            self.costs = read_costs()

        def _cost(self, scope: str) -> float:
            known = self.costs.get(scope)
            if known is not None:
                return known
            return UNKNOWN_TEST_COST_S * len(self.workqueue[scope])

        def _assign_work_unit(self, node) -> None:
            costliest = max(self.workqueue, key=self._cost)
            self.workqueue.move_to_end(costliest, last=False)
            super()._assign_work_unit(node)

        def _reschedule(self, node) -> None:
            # A worker runs a test once it holds the next one (xdist tears down by the next
            # item), so it needs a second test queued, and no more.
            if node.shutting_down:
                return
            if not self.workqueue:
                node.shutdown()
                return
            if self._pending_of(self.assigned_work[node]) < 2:
                self._assign_work_unit(node)

    @pytest.hookimpl(tryfirst=True)
    def pytest_xdist_make_scheduler(config: pytest.Config, log):
        if config.getvalue("dist") == "loadfile":
            return CostliestFileFirst(config, log)
        return None


class FileCostRecorder:
    """On the controller (or the only process): seconds per file, and each worker's last report."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.seconds: dict[str, float] = defaultdict(float)
        self.last_report: dict[str, float] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.seconds[report.nodeid.split("::")[0]] += report.duration
        node = getattr(report, "node", None)
        worker = node.gateway.id if node is not None else "main"
        self.last_report[worker] = time.monotonic() - self.started

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if hasattr(session.config, "workerinput"):
            return
        costs = {path: round(s, 1) for path, s in sorted(self.seconds.items())}
        COSTS_PATH.write_text(json.dumps(costs, indent=1) + "\n")

    def pytest_terminal_summary(self, terminalreporter) -> None:
        for worker, at in sorted(self.last_report.items()):
            terminalreporter.write_line(f"file costs: {worker} ran out of work at {at:.0f} s")
        terminalreporter.write_line(f"file costs: {len(self.seconds)} files -> {COSTS_PATH}")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("record_file_costs") and not hasattr(config, "workerinput"):
        config.pluginmanager.register(FileCostRecorder(), "file-cost-recorder")
