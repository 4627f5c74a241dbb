"""The filter ambassador: a backend wrapping another and keeping only items a JMESPath predicate accepts.

JMESPath, not eval: a predicate from a pipeline spec can read an item, never run code.
"""

from __future__ import annotations

from prometheus_client import Counter

from services.core.expressions import Expression, compile_expression, truthy

from .backends.base import FullPage, Item, Page, Skipped, SourceBackend

ITEMS_FILTERED = Counter(
    "batchmesh_source_items_filtered", "Items a source filter dropped from listings", ("pipeline",)
)


def compile_predicate(expression: str) -> Expression:
    """Compile once; ValueError naming what is wrong for an expression that does not parse or is empty."""
    if not isinstance(expression, str) or not expression.strip():
        raise ValueError("bad filter expression: empty (expected a JMESPath expression such as \"size > `0`\")")
    try:
        return compile_expression(expression)
    except ValueError as exc:
        raise ValueError(f"bad filter expression: {exc}") from None


class FilteredBackend(SourceBackend):
    """Lists and gets from `inner`, hiding items whose `expression` result is not truthy.

    Pages are filled by asking `inner` for exactly the number still missing, so the inner cursor always marks
    the end of what was returned. A request scans at most `scan_budget` inner items and may return a short
    (even empty) page with a non-null cursor: the walk goes on, a selective filter just cannot stall one request.
    """

    type_name = "filtered"

    def __init__(self, inner: SourceBackend, expression: str, pipeline: str | None = None,
                 scan_budget: int = 20_000) -> None:
        self.inner = inner
        self.expression = expression
        self.predicate = compile_predicate(expression)
        self.pipeline = pipeline  # None: create_app fills in its own pipeline label
        self.scan_budget = scan_budget

    def keeps(self, item: Item) -> bool:
        return truthy(self.predicate.search(item))  # an expression failing on an odd item is null: no match

    def list(self, limit: int, cursor: str | None = None) -> Page:
        items, next_cursor, _ = self.list_page(limit, cursor)
        return items, next_cursor

    def list_page(self, limit: int, cursor: str | None = None) -> FullPage:
        kept: list[Item] = []
        skipped: list[Skipped] = []
        scanned = 0
        while True:
            page, cursor, bad = self.inner.list_page(limit - len(kept), cursor)
            skipped.extend(bad)
            scanned += len(page)
            matching = [item for item in page if self.keeps(item)]
            if len(matching) < len(page):
                ITEMS_FILTERED.labels(self.pipeline or "default").inc(len(page) - len(matching))
            kept.extend(matching)
            # An empty inner page with a cursor would loop forever here: hand the cursor back instead.
            if cursor is None or not page or len(kept) >= limit or scanned >= max(self.scan_budget, limit):
                return kept, cursor, skipped

    def get(self, name: str) -> Item | None:
        item = self.inner.get(name)
        return item if item is not None and self.keeps(item) else None

    def close(self) -> None:
        self.inner.close()
