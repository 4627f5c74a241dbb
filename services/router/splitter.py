"""The splitter: each item to exactly one route by kind (`split: {input, by, routes: {value: route}, default}`),
to <stage>.<route>. No drops: a value no route names, or no key at all, goes to the default route, which is
required. An item routed down a branch that does not lead to a barrier after the splitter is recorded as skipped
for that barrier, in the same step (core.spec_skips); a route that leads to it (also through a merge) is not."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from services.core.expressions import Expression, compile_expression, route_key
from services.core.spec_routers import SplitSpec

from .base import Document, Router, register


@register
class Splitter(Router):
    kind: ClassVar[str] = "split"
    mode: ClassVar[str] = "split"
    spec: SplitSpec

    def prepare(self, spec: SplitSpec) -> None:
        if not getattr(spec, "default", None):
            raise ValueError("a splitter needs a default route: it never drops an item")
        self.by = compile_expression(spec.by)
        names = spec.route_names  # the order of spec.outputs()
        self.route_index = {value: names.index(route) for value, route in spec.routes.items()}
        self.default_index = names.index(spec.default)

    def expression(self) -> Expression:
        return self.by

    def decide(self, doc: Document) -> Sequence[int]:
        key = route_key(self.by.search(doc))
        return (self.route_index.get(key, self.default_index) if key is not None else self.default_index,)

    def lua_conf(self) -> dict[str, Any]:
        return {"routes": {v: i + 1 for v, i in self.route_index.items()}, "default": self.default_index + 1}
