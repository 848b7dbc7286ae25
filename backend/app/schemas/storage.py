"""Bodies of storage use: what a user's jobs keep on disk."""

from __future__ import annotations

from pydantic import BaseModel, Field


class JobStorageOut(BaseModel):
    job_id: int
    bytes: int


class StorageOut(BaseModel):
    user_id: int
    total_bytes: int
    jobs: list[JobStorageOut] = Field(description="jobs with files kept, largest first")
    retention_days: int = Field(
        description="finished jobs' files are deleted this many days after they end (0: kept)"
    )


class StorageFreedOut(BaseModel):
    job_id: int
    freed_bytes: int
