"""The merger: N streams into one, <stage> (`merge: {inputs: [a, b]}`), fair across inputs: every round reads at
most `per_input` entries from each input (rotating which goes first), so a busy input cannot starve a quiet one —
a 10-entry input is drained in the first round even behind a 10,000-entry one. Server-side, one script call reads
all inputs and publishes and acknowledges every entry read (at most `per_input` per input, fewer when a call
would take longer than its time budget: base.CALL_BUDGET_MS)."""

from __future__ import annotations

from typing import ClassVar

from services.core.spec_routers import MergeSpec

from .base import Router, register


@register
class Merger(Router):
    kind: ClassVar[str] = "merge"
    mode: ClassVar[str] = "all"
    spec: MergeSpec

    def prepare(self, spec: MergeSpec) -> None:
        self.per_input = spec.per_input

    def batch_count(self) -> int:
        # A round reads about one batch in all: each input gets its share, at least one entry.
        return self.per_input or max(1, self.settings.batch_size // len(self.spec.inputs))

    def max_lua_count(self) -> int:
        # The share is the fairness unit: a call may take fewer under its time budget, never more.
        return self.count
