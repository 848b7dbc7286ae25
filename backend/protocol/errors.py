"""The errors a run raises on purpose, as both sides read them: the node side raises them,
the control plane checks a job's settings with the same rules at submit (``SettingsError``
is its 422) and reads ``retryable`` off a failed run. They carry only a message (and a field),
so they pickle across Ray unchanged."""

from __future__ import annotations


class RunError(Exception):
    """Base of the errors a run raises on purpose; ``retryable`` tells the dispatcher."""

    retryable = True


class RetryableRunError(RunError):
    """Work was lost with a worker or node: the job resumes from its last checkpoint."""

    retryable = True


class FinalRunError(RunError):
    """The job cannot succeed as specified: it fails at once, without retries."""

    retryable = False


class DataError(FinalRunError, ValueError):
    """The requested data cannot be found, read or used."""


class ModelError(FinalRunError, ValueError):
    """The requested model cannot be built or loaded."""


class SettingsError(FinalRunError, ValueError):
    """A strategy knob is unknown or out of range (a 422 at submit naming ``field``)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field  # the training_config key at fault; pickled with __dict__


class StartupError(FinalRunError):
    """Workers could not start because of the job's data, model or settings."""


class LostWorkersError(RetryableRunError):
    """Too few worker actors are alive or free to go on."""


class RunCancelledError(Exception):
    """The run was asked to stop (neither success nor failure)."""
