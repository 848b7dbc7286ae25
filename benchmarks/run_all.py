"""`make bench`: every benchmark in one sitting, one after the other on a quiet machine, then
one table of their headline figures (DistLM, the baseline measured in the same run, the
ratio, the aim and whether it is met). Each script's whole output goes to a log of its own.

    .venv/bin/python benchmarks/run_all.py [--only submit,ledger] [--logs DIR]
        [--database postgresql://postgres@127.0.0.1:5432/test]

A script that fails shows as failed with its log; one that needs what this machine lacks
(root for the separate-hosts harness) shows as skipped, with the reason.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.results import Result, parse  # noqa: E402 - after the path above


@dataclass(frozen=True)
class Run:
    name: str
    args: list[str] = field(default_factory=list)
    needs_root: bool = False
    timeout_s: int = 1200
    script: str = ""  # benchmarks/<script>.py, where the name is not the script's

    @property
    def path(self) -> Path:
        return ROOT / "benchmarks" / f"{self.script or self.name}.py"


def runs(database: str) -> list[Run]:
    """Sizes chosen so that the whole sitting takes about half an hour on 2 cores."""
    return [
        Run("scheduler", ["1000", "10000"]),
        # 2,000 jobs a row (under a minute in all): with 200 a row lasted half a second, and
        # the writers' own start was a large part of it.
        Run(
            "ledger",
            ["--postgres", own_database(database, "distlm_bench_ledger"), "--jobs", "2000"],
        ),
        Run(
            "submit",
            [
                "--database",
                database,
                "--concurrency",
                "1,8",
                "--seconds",
                "4",
                "--repeat",
                "3",
                "--reads-while-starting",
            ],
        ),
        Run(
            "submit-users",
            [
                "--database",
                database,
                "--concurrency",
                "8",
                "--seconds",
                "4",
                "--repeat",
                "3",
                "--user-per-client",
            ],
            script="submit",
        ),
        Run("jobs"),
        Run("run_start", ["--repeats", "1"]),
        Run("fedavg_vs_flower"),
        Run("es"),
        Run("split"),
        Run("verified_credit_audit"),
        Run("uploads", ["--mb", "64", "--repeat", "2"]),
        Run("across_machines", ["--repeat", "1"], needs_root=True),
    ]


def own_database(server_url: str, name: str) -> str:
    """A database of the benchmark's own on the same server (the ledger benchmark empties
    the one it is given), made where it is missing."""
    from sqlalchemy import create_engine, text

    from core.settings import normalise_database_url

    server = create_engine(normalise_database_url(server_url), isolation_level="AUTOCOMMIT")
    with server.connect() as connection:
        exists = connection.execute(
            text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
        ).scalar()
        if not exists:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    server.dispose()
    return server.url.set(database=name).render_as_string(hide_password=False)


def machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    memory_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    return f"{os.cpu_count()} cores ({model}), {memory_kb / 2**20:.0f} GiB"


def run_one(run: Run, logs: Path) -> tuple[str, list[Result]]:
    """(how it went, its results)."""
    if run.needs_root and os.geteuid() != 0:
        return "skipped: needs root (network namespaces)", []
    log = logs / f"{run.name.replace(' ', '-').replace(',', '')}.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "backend")}
    started = time.monotonic()
    with log.open("w") as out:
        try:
            finished = subprocess.run(
                [sys.executable, str(run.path), *run.args],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=run.timeout_s,
            )
            code = finished.returncode
        except subprocess.TimeoutExpired:
            code = None
    results = [r for line in log.read_text().splitlines() if (r := parse(line))]
    took = f"{time.monotonic() - started:.0f} s"
    if code is None:
        return f"timed out after {run.timeout_s} s (log {log})", results
    if code != 0:
        return f"failed with {code} after {took} (log {log})", results
    return f"ran in {took}", results


def number(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def table(outcomes: dict[str, tuple[str, list[Result]]]) -> str:
    lines = [
        "| benchmark | figure | DistLM | baseline | ratio | aim | met |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for name, (how, results) in outcomes.items():
        if not results:
            lines.append(f"| {name} | {how} | | | | | |")
        for r in results:
            baseline = f"{number(r.baseline)} {r.unit} ({r.baseline_name})" if r.baseline else ""
            ratio = f"{r.ratio:.2f}x" if r.ratio is not None else ""
            aim = f"{r.aim}{'x' if r.baseline else ' ' + r.unit}" if r.aim else ""
            met = {True: "yes", False: "**no**", None: ""}[r.met()]
            value = f"{number(r.value)} {r.unit}"
            lines.append(
                f"| {name} | {r.figure} | {value} | {baseline} | {ratio} | {aim} | {met} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated benchmark names")
    parser.add_argument("--logs", default="", help="where the scripts' outputs go")
    parser.add_argument(
        "--database",
        default=os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    args = parser.parse_args()
    chosen = {name for name in args.only.split(",") if name}
    logs = Path(args.logs or tempfile.mkdtemp(prefix="distlm-bench-"))
    logs.mkdir(parents=True, exist_ok=True)
    outcomes: dict[str, tuple[str, list[Result]]] = {}
    for run in runs(args.database):
        if chosen and run.name not in chosen:
            continue
        print(f"{run.name} ...", flush=True)
        outcomes[run.name] = run_one(run, logs)
        print(f"  {outcomes[run.name][0]}", flush=True)
    print(f"\n{dt.date.today().isoformat()}, {machine()}; logs in {logs}\n")
    print(table(outcomes))


if __name__ == "__main__":
    main()
