"""Pure pricing: resource-seconds → micro-tokens, at the rates in settings."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from ledger.models import MICRO

SECONDS_PER_HOUR = Decimal(3600)


@dataclass(frozen=True)
class Rates:
    """Tokens per resource-hour, and the platform's percentage of node earnings."""

    gpu_hour: Decimal
    cpu_core_hour: Decimal
    memory_gb_hour: Decimal
    fee_percent: Decimal
    # Tokens a job that ran on others' nodes pays at least (capped by its hold): however
    # small its requirements, a run is never free.
    min_job_charge: Decimal = Decimal(0)

    @property
    def min_charge_micro(self) -> int:
        """The minimum charge in micro-tokens."""
        return int(self.min_job_charge * MICRO)

    @classmethod
    def of(
        cls,
        gpu_hour: float,
        cpu_core_hour: float,
        memory_gb_hour: float,
        fee_percent: float,
        min_job_charge: float = 0.0,
    ) -> Rates:
        # str() first: Decimal(0.1) would carry the float's binary error.
        return cls(
            Decimal(str(gpu_hour)),
            Decimal(str(cpu_core_hour)),
            Decimal(str(memory_gb_hour)),
            Decimal(str(fee_percent)),
            Decimal(str(min_job_charge)),
        )


@dataclass(frozen=True)
class ResourceSeconds:
    """What ran on one node: resource x wall seconds."""

    gpu_seconds: float = 0.0
    cpu_core_seconds: float = 0.0
    memory_gb_seconds: float = 0.0

    def __post_init__(self) -> None:
        for name in ("gpu_seconds", "cpu_core_seconds", "memory_gb_seconds"):
            value = getattr(self, name)
            if not value >= 0 or value == float("inf"):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")

    def __add__(self, other: ResourceSeconds) -> ResourceSeconds:
        if not isinstance(other, ResourceSeconds):
            return NotImplemented
        return ResourceSeconds(
            self.gpu_seconds + other.gpu_seconds,
            self.cpu_core_seconds + other.cpu_core_seconds,
            self.memory_gb_seconds + other.memory_gb_seconds,
        )


@dataclass(frozen=True)
class CostBreakdown:
    gpu: int
    cpu: int
    memory: int

    @property
    def total(self) -> int:
        return self.gpu + self.cpu + self.memory


def _micro(seconds: float, tokens_per_hour: Decimal, rounding: str) -> int:
    value = Decimal(str(seconds)) * tokens_per_hour * MICRO / SECONDS_PER_HOUR
    return int(value.to_integral_value(rounding=rounding))


def price_usage(usage: ResourceSeconds, rates: Rates) -> CostBreakdown:
    """Metered cost, rounded down: a user is never charged a fraction they did not use."""
    return CostBreakdown(
        gpu=_micro(usage.gpu_seconds, rates.gpu_hour, ROUND_FLOOR),
        cpu=_micro(usage.cpu_core_seconds, rates.cpu_core_hour, ROUND_FLOOR),
        memory=_micro(usage.memory_gb_seconds, rates.memory_gb_hour, ROUND_FLOOR),
    )


def price_reservation(
    gpu: int, cpu_cores: float, memory_gb: float, runtime_s: int, rates: Rates
) -> CostBreakdown:
    """The most a job can cost: its whole requirements for its whole runtime (rounded up)."""
    return CostBreakdown(
        gpu=_micro(gpu * runtime_s, rates.gpu_hour, ROUND_CEILING),
        cpu=_micro(cpu_cores * runtime_s, rates.cpu_core_hour, ROUND_CEILING),
        memory=_micro(memory_gb * runtime_s, rates.memory_gb_hour, ROUND_CEILING),
    )


def platform_fee(amount: int, rates: Rates) -> int:
    return int((Decimal(amount) * rates.fee_percent / 100).to_integral_value(ROUND_FLOOR))


def tokens(micro: int) -> float:
    """Micro-tokens as a decimal number of tokens for the API."""
    return micro / MICRO


def tokens_to_micro(amount: Decimal | float) -> int:
    """Tokens (as typed, or a setting) in micro-tokens, rounded half to even."""
    return int((Decimal(str(amount)) * MICRO).to_integral_value())
