"""Work lost with a node is neither charged nor credited; all other work is, in every mode.

A run reports usage per step (``UsageEvent.step``). The dispatcher keeps the running
attempt's usage *unsaved* until a checkpoint at that step or later is saved; then it moves
into the job's usage, which settlement prices. Usage that arrives for a step an earlier
checkpoint already covers (a worker reporting after rank 0 saved) is saved at once. When the
attempt is lost (a node or worker gone), its unsaved usage is dropped: the next attempt
redoes that work from the checkpoint and is paid for it once. When the job ends by its own
doing (it succeeds, is cancelled, fails, or stops at its runtime limit or budget), its
unsaved usage is charged too: the user had that work, saved or not.

Unsaved usage is stored in a JSON column, summed by ``"<step>/<node>/<stage>"``, so it
survives a gateway restart and stays small (a few keys per step between checkpoints).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from compute.billing.usage import figures_of, seconds_of, seconds_used
from protocol.events import UsageEvent

UnsavedUsage = Mapping[str, Mapping[str, float]]  # "<step>/<node>/<stage>" -> figures


def with_unsaved(unsaved: UnsavedUsage | None, usage: UsageEvent) -> dict[str, dict]:
    """``unsaved`` plus ``usage`` (a new mapping)."""
    result = {key: dict(figures) for key, figures in (unsaved or {}).items()}
    key = f"{usage.step}/{usage.node_id}/{usage.stage}"
    result[key] = figures_of(seconds_of(result.get(key, {})) + seconds_used(usage))
    return result


def unsaved_events(unsaved: UnsavedUsage | None) -> list[UsageEvent]:
    """The unsaved usage as usage events, oldest step first."""
    events = []
    for key, figures in (unsaved or {}).items():
        step, node, stage = key.split("/", 2)
        done = seconds_of(figures)
        events.append(
            UsageEvent(
                int(node),
                done.gpu_seconds,
                done.cpu_core_seconds,
                done.memory_gb_seconds,
                stage=stage,
                step=int(step),
            )
        )
    return sorted(events, key=lambda event: (event.step, event.node_id, event.stage))


def saved_by(
    unsaved: UnsavedUsage | None, checkpoint_step: int
) -> tuple[list[UsageEvent], dict[str, dict]]:
    """What a checkpoint at ``checkpoint_step`` saves (usage of that step and earlier), and
    what stays unsaved."""
    saved, rest = [], {}
    for event in unsaved_events(unsaved):
        if event.step <= checkpoint_step:
            saved.append(event)
        else:
            rest = with_unsaved(rest, event)
    return saved, rest


def is_saved(usage: UsageEvent, saved_step: int | None) -> bool:
    """Whether the attempt's last checkpoint already covers this usage's step."""
    return saved_step is not None and usage.step <= saved_step


def describe_unsaved(events: Iterable[UsageEvent]) -> str:
    """ "3.1 CPU-core-seconds on node 2 and 1.5 on node 3" — for the log line that says
    what a lost attempt's unpaid work was."""
    by_node: dict[int, float] = {}
    gpu_by_node: dict[int, float] = {}
    for event in events:
        by_node[event.node_id] = by_node.get(event.node_id, 0.0) + event.cpu_core_seconds
        gpu_by_node[event.node_id] = gpu_by_node.get(event.node_id, 0.0) + event.gpu_seconds
    parts = []
    for node in sorted(by_node):
        part = f"{by_node[node]:.1f} CPU-core-seconds"
        if gpu_by_node[node]:
            part += f" and {gpu_by_node[node]:.1f} GPU-seconds"
        parts.append(f"{part} on node {node}")
    return ", ".join(parts)
