"""Barrier stage kinds of the pipeline spec (book ch. 12): `join` waits until every item of a batch is through,
`reduce` folds items as they arrive and emits the batch's aggregate when the last one is in. Both read one stream
and keep their state in Redis per batch; expressions are JMESPath over the item document (see core.expressions)."""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .spec_base import parse_duration
from .spec_routers import ExpressionText, _OneInput


class JoinSpec(_OneInput):
    """join: {input, emit} -> stream <stage>: one batch-complete event per batch (`emit: event`), or every item of
    the batch, held until the barrier and then released together (`emit: items`)."""

    kind: ClassVar[str] = "join"
    emit: Literal["event", "items"] = "event"


class FoldSpec(BaseModel):
    """One aggregate of a reduce: exactly one of
    count: true (items) | expression (items it is truthy for);
    sum: expression -> a number (total), a list of numbers (their total) or an object of numbers (sum per key);
    histogram: expression -> a value or list of values, counted per value (or per bucket of `buckets` edges)."""

    model_config = ConfigDict(extra="forbid")

    count: bool | ExpressionText | None = None
    sum: ExpressionText | None = None
    histogram: ExpressionText | None = None
    buckets: list[float] | None = Field(default=None, min_length=1, description="Ascending bucket edges.")

    @model_validator(mode="after")
    def _one_operator(self) -> FoldSpec:
        given = [op for op in ("count", "sum", "histogram") if getattr(self, op) not in (None, False)]
        if len(given) != 1:
            raise ValueError(f"give exactly one operator of count, sum, histogram; got {given or 'none'}")
        if self.buckets is not None:
            if self.histogram is None:
                raise ValueError("'buckets' applies to a histogram only")
            if self.buckets != sorted(set(self.buckets)):
                raise ValueError(f"bucket edges must be strictly ascending: {self.buckets}")
        return self

    @property
    def operator(self) -> str:
        return next(op for op in ("count", "sum", "histogram") if getattr(self, op) not in (None, False))


class ReduceSpec(_OneInput):
    """reduce: {input, fold: {name: operator}, top, write, every} -> stream <stage>: one item per batch, the final
    aggregate. A running aggregate is in Redis (and in the `write` file, final: false) while the batch runs."""

    kind: ClassVar[str] = "reduce"
    fold: dict[str, FoldSpec] = Field(min_length=1)
    top: int | None = Field(default=None, ge=1, le=10_000, description="Also list the k largest of each object.")
    write: str | None = Field(default=None, description="File name in the out dir for the aggregate (JSON).")
    every: float = Field(default=1.0, gt=0, description="Seconds between running-aggregate writes.")

    _duration = field_validator("every", mode="before")(parse_duration)

    @field_validator("write")
    @classmethod
    def _file_name(cls, name: str | None) -> str | None:
        if name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,120}", name):
            raise ValueError(f"bad file name {name[:80]!r}: one file in the out dir (letters, digits, '.', '_', '-'; "
                             "no '/', at most 121 characters)")
        return name

    @field_validator("fold")
    @classmethod
    def _names(cls, fold: dict[str, FoldSpec]) -> dict[str, FoldSpec]:
        for name in fold:
            if not name or "\x1f" in name or len(name) > 100:
                raise ValueError(f"bad aggregate name {name!r}")
        return fold


BARRIER_SPECS = {JoinSpec.kind: JoinSpec, ReduceSpec.kind: ReduceSpec}
