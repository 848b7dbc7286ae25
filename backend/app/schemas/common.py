"""Shapes several routers share: a page of a list, and a resource triple."""

from __future__ import annotations

from typing import Generic, TypeVar

from pydantic import BaseModel

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


class ResourcesOut(BaseModel):
    gpu: int
    cpu_cores: float
    memory: float
