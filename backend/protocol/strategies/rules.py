"""The strategy contract both sides share: what a mode allows and how it shares out a job.

Modelled on Flower's ``Strategy`` base class: documented hooks with defaults, one subclass
per mode. The gateway asks a mode's rules whether a job can run (``parse_settings``,
``check_job``), how many workers its requirements give (``worker_count``), what it asks
beside them (``extra_shares``) and how its progress reads (``progress``). All of it is cheap
and imports no Ray or torch: the gateway calls it at submit and in every dispatcher round.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from protocol.errors import SettingsError
from protocol.placement import ExtraShare
from protocol.run import JobRequest


class StrategyRules(ABC):
    """A mode's rules: subclass, set the class attributes, implement ``parse_settings``, and
    add one line to ``registry.RULES``; the node side's strategy adds ``run``."""

    name: ClassVar[str]
    model_types: ClassVar[frozenset[str]]  # the model types it trains
    default_for: ClassVar[frozenset[str]] = frozenset()  # model types it is the default for
    progress_unit: ClassVar[str] = "step"  # also the key of the step in checkpoint state
    tasks: ClassVar[frozenset[str]] = frozenset({"train"})  # the job tasks it can run

    @abstractmethod
    def parse_settings(self, training: dict[str, Any]) -> Any:
        """The mode's settings from ``training_config`` (without ``strategy`` and
        ``num_workers``): defaults filled in, every knob checked. Raises ``SettingsError``
        naming the field for an unknown knob or a bad value."""

    def check_model_type(self, model_type: str) -> None:
        if model_type not in self.model_types:
            allowed = ", ".join(sorted(self.model_types))
            raise SettingsError(
                f"strategy '{self.name}' cannot train model type '{model_type}' "
                f"(it trains: {allowed})",
                "strategy",
            )

    def check_job(self, job: JobRequest, settings: Any) -> None:
        """Cross-field rules (data the mode cannot use, worker counts): ``SettingsError``.
        The default has none."""
        return None

    def check_task(self, task: str) -> None:
        if task not in self.tasks:
            allowed = ", ".join(sorted(self.tasks))
            raise SettingsError(
                f"strategy '{self.name}' cannot run task '{task}' (it runs: {allowed})", "task"
            )

    def extra_shares(self, job: JobRequest, settings: Any) -> tuple[ExtraShare, ...]:
        """Parts of the job beside its requirements' workers (split's data stage): placed,
        priced and metered like them. The default has none."""
        return ()

    def progress_note(self, values: dict[str, Any]) -> str | None:
        """What a metric point says about what limits the run, for the job's status reason
        ("trainer waits for data 40% of the time: ..."); None when it says nothing."""
        return None

    def worker_count(self, job: JobRequest, settings: Any) -> int:
        """How many worker actors share the job's requirements (``num_workers`` wins)."""
        return job.num_workers or 1

    def total_steps(self, settings: Any) -> int | None:
        """The number of steps (rounds, ...) the run will take, when it is known upfront."""
        return None

    def progress(self, settings: Any, step: int) -> str:
        """How far a running job is, in the mode's own unit: "round 4 of 10"."""
        total = self.total_steps(settings)
        return f"{self.progress_unit} {step}" + (f" of {total}" if total else "")


# The least memory a worker process is given: a Python with torch is about a third of a GB
# idle, so eight workers on 0.1 GB were eight processes of 330 MB billed as 0.1 GB.
MEMORY_PER_PROCESS_GB = 0.25


def processes_held(slots: int, memory_gb: float) -> int:
    """How many worker processes ``slots`` whole cores (or GPUs) and ``memory_gb`` hold: one
    per slot, as many as the memory gives each ``MEMORY_PER_PROCESS_GB``, at least one."""
    by_memory = int(memory_gb / MEMORY_PER_PROCESS_GB + 1e-9)
    return max(1, min(slots, by_memory))


def slots_of(job: JobRequest) -> int:
    """Whole cores (or GPUs) of a job's requirements, as far as its memory holds a process
    for each: the natural number of workers."""
    needs = job.requirements
    slots = needs.gpu if needs.gpu else max(1, int(needs.cpu_cores))
    return processes_held(slots, needs.memory_gb)
