"""The filter: only items a JMESPath predicate holds for go on, to <stage> (`filter: {input, where}`).

Dropped items are acknowledged, counted (`batchmesh_items_filtered_total`, stats field `filtered`) and, if the
wiring asks, moved to a progress state (`drop_state`, in the same transaction/script) or handed to a Python
callback (`on_drop`, Python path only). A barrier after the filter (a join, a reduce) stops waiting for a dropped
item: the drop is recorded in the barrier's `skipped` set of the item's batch in the same step (core.spec_skips).
The predicate compiler is core's (`compile_predicate`), so the source
ambassador filters with the same expressions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from services.core.expressions import Expression, compile_expression, truthy
from services.core.spec_routers import FilterSpec

from .base import Document, Router, register


@register
class Filter(Router):
    kind: ClassVar[str] = "filter"
    mode: ClassVar[str] = "filter"
    spec: FilterSpec

    def prepare(self, spec: FilterSpec) -> None:
        self.where = compile_expression(spec.where)

    def expression(self) -> Expression:
        return self.where

    def decide(self, doc: Document) -> Sequence[int]:
        return (0,) if truthy(self.where.search(doc)) else ()
