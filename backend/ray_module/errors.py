"""What a failed run means for the job: retry it from its checkpoint on live nodes, or fail it.

A run raises ``RetryableRunError`` (a worker, node or answer was lost) or ``FinalRunError``
(the job's data, model or settings cannot work: retrying cannot help). Both carry only a
message, so they pickle across Ray unchanged: a worker's ``DataError`` reaches the runner as
a ``RayTaskError`` that is also a ``DataError`` (``as_instanceof_cause``). ``is_retryable``
looks for our classes in that chain first, then for Ray's own lost-actor errors; nothing
matches on message text.
"""

from __future__ import annotations

from collections.abc import Iterator

from protocol.errors import (  # noqa: F401  (the classes are the protocol's)
    DataError,
    FinalRunError,
    LostWorkersError,
    ModelError,
    RetryableRunError,
    RunCancelledError,
    RunError,
    SettingsError,
    StartupError,
)

# Errors raised by libraries on bad input (a config transformers refuses, a wrong shape):
# deterministic, so retrying would only burn the user's tokens again.
_LIBRARY_INPUT_ERRORS = (ValueError, TypeError, NotImplementedError, KeyError)


def causes(error: BaseException, limit: int = 32) -> Iterator[BaseException]:
    """``error`` and what it wraps: Python's chain and a Ray task error's cause."""
    seen: set[int] = set()
    queue: list[BaseException] = [error]
    while queue and len(seen) < limit:
        current = queue.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        wrapped = [
            current.__cause__,
            current.__context__,
            getattr(current, "cause", None),  # RayTaskError
        ]
        queue.extend(e for e in wrapped if isinstance(e, BaseException))


def _lost_with_a_node(error: BaseException) -> bool:
    try:
        from ray import exceptions as ray_errors
    except ImportError:  # pragma: no cover - Ray is a dependency of every runner
        return False
    lost = (
        ray_errors.RayActorError,
        ray_errors.NodeDiedError,
        ray_errors.ObjectLostError,
        ray_errors.OwnerDiedError,
        ray_errors.WorkerCrashedError,
        ray_errors.LocalRayletDiedError,
    )
    return isinstance(error, lost)


def is_retryable(error: BaseException) -> bool:
    """Lost workers and nodes are worth a retry; bad data, models or settings are not."""
    chain = list(causes(error))
    for cause in chain:
        if isinstance(cause, RunError):
            return cause.retryable
    if any(_lost_with_a_node(cause) for cause in chain):
        return True
    return not any(isinstance(cause, _LIBRARY_INPUT_ERRORS) for cause in chain)


def _wraps_another(error: BaseException) -> bool:
    return getattr(error, "cause", None) is not None


def root_cause(error: BaseException) -> BaseException:
    """The innermost error worth showing: ours if there is one, else the end of the chain."""
    chain = [cause for cause in causes(error) if not _wraps_another(cause)] or [error]
    ours = [cause for cause in chain if isinstance(cause, RunError)]
    return ours[0] if ours else chain[-1]


def describe(error: BaseException) -> str:
    """A one-line reason for users, without a traceback."""
    root = root_cause(error)
    text = str(root).strip()
    first = text.splitlines()[0] if text else type(root).__name__
    return f"{type(root).__name__}: {first}"[:500]


class ClusterStartError(RuntimeError):
    """The local Ray head could not be started (the gateway cannot run jobs without it)."""
