"""The join (book ch. 12): a barrier that holds until every item of a batch is done, then emits once — one
batch-complete event (`emit: event`: items, done, failed ids) or the batch's items themselves, released together
(`emit: items`), so a stage after it (delete the originals) never starts on a batch that is not through."""

from __future__ import annotations

from services.core import Delivery

from .barrier import Arrival, Barrier


class Join(Barrier):
    kind = "join"

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.emits_held = self.spec.emit == "items"

    def arrival(self, delivery: Delivery) -> Arrival:
        assert delivery.item is not None
        hold = self.emits_held and self.plan.read  # items nobody reads are not held
        return Arrival(delivery.item.id, hold=delivery.raw if hold else b"")
