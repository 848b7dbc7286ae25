"""The one error body every 4xx and 5xx carries (documented on every route)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class FieldErrorOut(BaseModel):
    field: str = Field(description="where the bad value is, e.g. `requirements.gpu`")
    message: str


class ErrorOut(BaseModel):
    error: str = Field(description="a stable machine code, e.g. `not_found`")
    detail: str = Field(description="a sentence for humans")
    fields: list[FieldErrorOut] = Field(
        default_factory=list, description="each invalid field (422 from validation only)"
    )
