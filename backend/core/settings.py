"""Platform settings: environment variables, then ``backend/.env``, then ``backend/.env.example``.

Every field has a validation alias equal to its environment variable, and
``backend/.env.example`` lists each of them with a comment (a test keeps the two in step).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

BACKEND_DIR = Path(__file__).resolve().parent.parent
PROJECT_ROOT = BACKEND_DIR.parent
ENV_EXAMPLE_FILE = BACKEND_DIR / ".env.example"
ENV_FILE = BACKEND_DIR / ".env"

DEFAULT_SECRET_KEY = "dev-only-insecure-secret-key-change-me"
DEFAULT_ADMIN_PASSWORD = "admin-change-me"


def _env(name: str) -> AliasChoices:
    return AliasChoices(name)


class ConfigurationError(ValueError):
    """A setting is missing or unsafe for the chosen environment."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        # Later files win: .env overrides the documented defaults in .env.example.
        env_file=(ENV_EXAMPLE_FILE, ENV_FILE),
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
    )

    env: Literal["dev", "prod"] = Field("dev", validation_alias=_env("DISTLM_ENV"))
    secret_key: str = Field(DEFAULT_SECRET_KEY, validation_alias=_env("DISTLM_SECRET_KEY"))
    access_token_expire_minutes: int = Field(
        15, ge=1, le=60 * 24 * 30, validation_alias=_env("DISTLM_ACCESS_TOKEN_EXPIRE_MINUTES")
    )
    # A bearer token a Prometheus server scrapes GET /metrics with; empty: only admins may.
    metrics_token: str = Field("", validation_alias=_env("DISTLM_METRICS_TOKEN"))
    # Reverse proxies whose X-Forwarded-For names the client (comma-separated addresses or
    # networks; empty: none, and the header is ignored: the login throttle counts the
    # connection's own address).
    trusted_proxies: str = Field(
        "", max_length=2000, validation_alias=_env("DISTLM_TRUSTED_PROXIES")
    )
    refresh_token_expire_days: int = Field(
        30, ge=1, le=365, validation_alias=_env("DISTLM_REFRESH_TOKEN_EXPIRE_DAYS")
    )
    # Finished jobs' models, results and checkpoints are deleted this many days after the
    # job ended; 0 keeps them until their owner deletes them.
    artifact_retention_days: int = Field(
        0, ge=0, le=36_500, validation_alias=_env("DISTLM_ARTIFACT_RETENTION_DAYS")
    )
    # The largest checkpoint, model or results archive a job's driver may upload.
    max_upload_mb: int = Field(
        4096, ge=1, le=1_048_576, validation_alias=_env("DISTLM_MAX_UPLOAD_MB")
    )
    # Audit a sample of split trainers' steps on another node (compute.audits): a trainer
    # that drives its own job reports its own losses; off only where nodes are one's own.
    audit_trainers: bool = Field(True, validation_alias=_env("DISTLM_AUDIT_TRAINERS"))
    database_url: str = Field(
        "sqlite:///var/distlm.db", validation_alias=_env("DISTLM_DATABASE_URL")
    )
    host: str = Field("127.0.0.1", validation_alias=_env("DISTLM_HOST"))
    port: int = Field(8000, ge=1, le=65535, validation_alias=_env("DISTLM_PORT"))
    log_level: str = Field("info", validation_alias=_env("DISTLM_LOG_LEVEL"))
    admin_username: str = Field("admin", validation_alias=_env("DISTLM_ADMIN_USERNAME"))
    admin_password: str = Field("", validation_alias=_env("DISTLM_ADMIN_PASSWORD"))

    # Jobs run on the nodes' agents (each on a Ray of its own, a multi-node job on a cluster
    # of its own); the gateway runs no Ray and hears from drivers over HTTP. `make run` also
    # lends this machine through a local agent, with these CPUs (0: all) and object store.
    local_node: bool = Field(True, validation_alias=_env("DISTLM_LOCAL_NODE"))
    ray_num_cpus: int = Field(0, ge=0, validation_alias=_env("DISTLM_RAY_NUM_CPUS"))
    ray_object_store_mb: int = Field(
        256, ge=78, validation_alias=_env("DISTLM_RAY_OBJECT_STORE_MB")
    )

    data_root: Path = Field(Path("var/data"), validation_alias=_env("DISTLM_DATA_ROOT"))
    storage_path: Path = Field(Path("var/storage"), validation_alias=_env("DISTLM_STORAGE_PATH"))

    tokens_per_gpu_hour: float = Field(
        10.0, ge=0, validation_alias=_env("DISTLM_TOKENS_PER_GPU_HOUR")
    )
    tokens_per_cpu_core_hour: float = Field(
        1.0, ge=0, validation_alias=_env("DISTLM_TOKENS_PER_CPU_CORE_HOUR")
    )
    tokens_per_memory_gb_hour: float = Field(
        0.1, ge=0, validation_alias=_env("DISTLM_TOKENS_PER_MEMORY_GB_HOUR")
    )
    platform_fee_percent: float = Field(
        5.0, ge=0, le=100, validation_alias=_env("DISTLM_PLATFORM_FEE_PERCENT")
    )
    min_job_charge: float = Field(
        0.01, ge=0, le=1_000_000, validation_alias=_env("DISTLM_MIN_JOB_CHARGE")
    )
    signup_grant: float = Field(100.0, ge=0, validation_alias=_env("DISTLM_SIGNUP_GRANT"))
    default_max_runtime_s: int = Field(
        3600, ge=1, validation_alias=_env("DISTLM_DEFAULT_MAX_RUNTIME_S")
    )
    max_waiting_jobs_per_user: int = Field(
        100, ge=0, le=1_000_000, validation_alias=_env("DISTLM_MAX_WAITING_JOBS_PER_USER")
    )
    submits_per_minute: int = Field(
        60, ge=0, le=1_000_000, validation_alias=_env("DISTLM_SUBMITS_PER_MINUTE")
    )
    # Open event streams and log follows (GET /jobs/{id}/events, /logs?follow=true) per user
    # and in all, per gateway process: 429 beyond.
    max_streams_per_user: int = Field(
        4, ge=1, le=10_000, validation_alias=_env("DISTLM_MAX_STREAMS_PER_USER")
    )
    max_streams: int = Field(64, ge=1, le=100_000, validation_alias=_env("DISTLM_MAX_STREAMS"))
    queue_unplaceable_jobs: bool = Field(
        True, validation_alias=_env("DISTLM_QUEUE_UNPLACEABLE_JOBS")
    )

    job_max_attempts: int = Field(3, ge=1, le=20, validation_alias=_env("DISTLM_JOB_MAX_ATTEMPTS"))
    job_start_timeout_s: int = Field(
        600, ge=10, le=86_400, validation_alias=_env("DISTLM_JOB_START_TIMEOUT_S")
    )
    # `make run`'s launcher runs the dispatcher in a process of its own and sets this false
    # for its workers; a plain `uvicorn app.main:app` dispatches in one of its workers.
    dispatch_in_gateway: bool = Field(True, validation_alias=_env("DISTLM_DISPATCH_IN_GATEWAY"))
    dispatch_interval_s: float = Field(
        1.0, gt=0, le=60, validation_alias=_env("DISTLM_DISPATCH_INTERVAL_S")
    )
    # Another gateway process takes the dispatcher over this long after its leader died.
    leader_lease_s: float = Field(
        10.0, ge=1, le=600, validation_alias=_env("DISTLM_LEADER_LEASE_S")
    )
    workers: int = Field(1, ge=1, le=64, validation_alias=_env("DISTLM_WORKERS"))

    node_timeout: int = Field(60, ge=1, validation_alias=_env("NODE_TIMEOUT"))
    node_heartbeat_interval: int = Field(10, ge=1, validation_alias=_env("NODE_HEARTBEAT_INTERVAL"))
    # Approving a node hands it the cluster's keys (README, Security): "auto" approves at
    # once in dev only; prod approves by hand unless this is explicitly "true".
    node_auto_approve_mode: Literal["auto", "true", "false"] = Field(
        "auto", validation_alias=_env("DISTLM_NODE_AUTO_APPROVE")
    )

    login_max_failures: int = Field(5, ge=1, validation_alias=_env("DISTLM_LOGIN_MAX_FAILURES"))
    login_lockout_s: int = Field(300, ge=1, validation_alias=_env("DISTLM_LOGIN_LOCKOUT_S"))
    login_max_failures_per_address: int = Field(
        20, ge=1, validation_alias=_env("DISTLM_LOGIN_MAX_FAILURES_PER_ADDRESS")
    )
    argon2_time_cost: int = Field(3, ge=1, validation_alias=_env("DISTLM_ARGON2_TIME_COST"))
    argon2_memory_kib: int = Field(65536, ge=8, validation_alias=_env("DISTLM_ARGON2_MEMORY_KIB"))

    @property
    def node_auto_approve(self) -> bool:
        if self.node_auto_approve_mode == "auto":
            return self.env == "dev"
        return self.node_auto_approve_mode == "true"

    @model_validator(mode="after")
    def _check_and_resolve(self) -> Settings:
        weak_key = self.secret_key == DEFAULT_SECRET_KEY or len(self.secret_key) < 32
        if self.env == "prod" and weak_key:
            raise ConfigurationError(
                "DISTLM_ENV=prod needs DISTLM_SECRET_KEY set to a random value of at "
                "least 32 characters (the default dev key is refused)"
            )
        if self.env == "prod" and self.admin_password == DEFAULT_ADMIN_PASSWORD:
            raise ConfigurationError("DISTLM_ENV=prod refuses the example DISTLM_ADMIN_PASSWORD")
        # Relative paths are relative to the project root, not to the caller's cwd.
        self.data_root = _absolute(self.data_root)
        self.storage_path = _absolute(self.storage_path)
        self.database_url = normalise_database_url(self.database_url)
        return self


def _absolute(path: Path) -> Path:
    return path if path.is_absolute() else (PROJECT_ROOT / path).resolve()


def normalise_database_url(url: str) -> str:
    """Use psycopg 3 for plain PostgreSQL URLs; anchor relative SQLite files at the project root."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        relative = url.removeprefix("sqlite:///")
        if relative and relative != ":memory:" and not relative.startswith("file:"):
            return "sqlite:///" + str(_absolute(Path(relative)))
    return url


def settings_env_names() -> set[str]:
    """The environment variable of every setting (what .env.example must list)."""
    names: set[str] = set()
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        assert isinstance(alias, AliasChoices)
        names.update(str(choice) for choice in alias.choices)
    return names


@lru_cache
def get_settings() -> Settings:
    return Settings()
