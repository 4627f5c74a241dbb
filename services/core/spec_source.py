"""The spec's `source` (what the ambassador lists) and `schedule` (when the manager starts a batch) sections."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from .spec_base import K8sName, Strict, parse_duration


class SourceSpec(Strict):
    type: Literal["directory", "jsonl"] = "directory"
    path: str
    glob: str = "*"
    poll: float = Field(default=5.0, gt=0, description="Seconds between listings; new items are picked up.")
    filter: str | None = Field(default=None, description="JMESPath predicate applied in the ambassador.")

    _duration = field_validator("poll", mode="before")(parse_duration)

    @field_validator("filter")
    @classmethod
    def _compiles(cls, expression: str | None) -> str | None:
        if expression is not None:
            from .expressions import compile_expression

            try:
                compile_expression(expression)
            except ValueError as exc:  # one line: the expression, why and where
                raise ValueError(str(exc).replace("bad expression", "bad JMESPath expression", 1)) from None
        return expression


class AfterSpec(Strict):
    pipeline: K8sName
    stage: str | None = Field(default=None, description="Only this barrier's events (default: any of them).")


class ScheduleSpec(Strict):
    """When the manager starts a batch, besides once at start. Default: on new items — every `source.poll` it
    lists, and a listing that finds new work is a new batch."""

    cron: str | None = Field(default=None, description="A new batch at each tick; a tick while the previous "
                                                       "batch still runs is skipped. 5 fields, or 6 with seconds.")
    after: AfterSpec | None = Field(default=None, description="A new batch when that pipeline's batch completes.")

    @field_validator("cron")
    @classmethod
    def _cron(cls, text: str | None) -> str | None:
        from croniter import croniter

        if text is not None and not croniter.is_valid(text):
            raise ValueError(f"not a cron expression: {text!r} (e.g. '*/5 * * * *')")
        return text

    @model_validator(mode="after")
    def _one(self) -> ScheduleSpec:
        if self.cron is not None and self.after is not None:
            raise ValueError("give one of 'cron' or 'after'")
        return self
