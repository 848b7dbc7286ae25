"""``distlm watch`` and ``Job.wait(progress=True)``: a live progress bar on stderr (step or
round of total, loss or accuracy, samples or evaluations per second, tokens spent of the
hold, ETA), fed by the job's event stream."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any, Protocol

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn


class Job(Protocol):  # distlm.client.Job, named here without importing it
    id: int
    data: dict[str, Any]

    @property
    def status(self) -> str: ...
    @property
    def reason(self) -> str: ...
    def refresh(self) -> Any: ...
    def events(self) -> Iterator[dict[str, Any]]: ...


PROGRESS = re.compile(r"\b(step|round) (\d+) of (\d+)")
SCORES = ("loss", "train_loss", "validation_accuracy", "accuracy", "validation_loss")
SPEEDS = ("samples_per_s", "evaluations_per_s", "tokens_per_s")


def describe(values: dict[str, Any]) -> str:
    parts = []
    score = next((k for k in SCORES if isinstance(values.get(k), int | float)), None)
    if score:
        parts.append(f"{score} {values[score]:.4g}")
    speed = next((k for k in SPEEDS if isinstance(values.get(k), int | float)), None)
    if speed:
        parts.append(f"{values[speed]:.4g} {speed.removesuffix('_per_s')}/s")
    return ", ".join(parts)


def watch(job: Job, *, timeout_s: float | None = None, console: Console | None = None) -> Job:
    console = console or Console(stderr=True)
    started = time.monotonic()
    columns = (
        TextColumn("[bold]job {task.fields[job]}[/] {task.fields[status]}"),
        BarColumn(),
        TextColumn("{task.fields[where]}"),
        TextColumn("{task.fields[figures]}"),
        TextColumn("tokens {task.fields[spent]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("", total=None, job=job.id, status=job.status, where="",
                            figures="", spent="")  # fmt: skip
        last_cost = 0.0
        unit = "step"

        def show(done: int | None = None, total: int | None = None) -> None:
            if total:
                bar.update(task, total=total)
            if done is not None:  # events and the status reason may arrive out of step
                bar.update(task, completed=max(done, bar.tasks[0].completed))
            current = bar.tasks[0]
            of = f"/{current.total:.0f}" if current.total else ""
            bar.update(task, where=f"{unit} {current.completed:.0f}{of}")

        for event in job.events():
            kind, data = event["event"], event["data"]
            if kind == "metric":
                values = data.get("values") or {}
                if data.get("step") == 0 and isinstance(values.get("total_steps"), int):
                    show(total=values["total_steps"])
                elif data.get("step", 0) > 0:
                    show(done=data["step"])
                    if describe(values):
                        bar.update(task, figures=describe(values))
            if kind == "status":
                match = PROGRESS.search(data.get("reason", ""))
                if match:
                    unit = match.group(1)
                    show(total=int(match.group(3)))
                bar.update(task, status=data.get("status", ""))
            if time.monotonic() - last_cost > 1.0 or kind in ("status", "end"):
                last_cost = time.monotonic()
                job.refresh()
                match = PROGRESS.search(job.reason)
                if match:
                    unit = match.group(1)
                    show(done=int(match.group(2)), total=int(match.group(3)))
                spent = f"{job.data.get('cost_so_far') or 0:.4g} of {job.data.get('hold') or 0:.4g}"
                bar.update(task, status=job.status, spent=spent)
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                raise TimeoutError(f"job {job.id} is still {job.status}")
        job.refresh()
        bar.update(task, status=job.status)
    return job
