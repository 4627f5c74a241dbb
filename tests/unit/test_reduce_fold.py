"""A reduce's fold, without Redis: the increments one item document contributes per operator, bucket edges, the
top-k order, and the numbers read back from Redis."""

from __future__ import annotations

from typing import Any

import pytest

from services.core.barriers import SEP, number, top
from services.core.spec_barriers import FoldSpec
from services.router.reduce import Folder, _bucket


class _Folder(Folder):
    def increments(self, doc: dict[str, Any]) -> list[Any]:
        """As the fold script receives them: every amount a string (integers are carried as Python ints)."""
        return [(kind, field, str(amount)) for kind, field, amount in super().increments(doc)]


def folder(name: str = "x", **fold: Any) -> Folder:
    return _Folder(name, FoldSpec(**fold))


def doc(**data: Any) -> dict[str, Any]:
    return {"id": "a", "name": "a", "data": data, "version": None, "batch": "b"}


def totals(increments: list[tuple[str, str, str]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for _, field, amount in increments:
        out[field] = out.get(field, 0) + float(amount)
    return out


def test_count_true_counts_every_item() -> None:
    assert folder(count=True).increments(doc()) == [("i", "x", "1")]


@pytest.mark.parametrize(("value", "counted"), [(3, True), (0, True), (1.5, True), ("y", True), (True, True),
                                                ([1], True), ({"a": 1}, True), (False, False), (None, False),
                                                ("", False), ([], False), ({}, False)])
def test_count_expression_counts_items_it_is_truthy_for(value: Any, counted: bool) -> None:
    assert folder(count="data.v").increments(doc(v=value)) == ([("i", "x", "1")] if counted else [])


def test_count_of_a_comparison() -> None:
    f = folder(count="data.n > `2`")
    assert [len(f.increments(doc(n=n))) for n in (1, 2, 3, "9")] == [0, 0, 1, 0]


def test_sum_of_numbers_lists_and_objects() -> None:
    f = folder("total", sum="data.v")
    assert f.increments(doc(v=3)) == [("i", "total", "3")]
    assert f.increments(doc(v=-2)) == [("i", "total", "-2")]
    assert f.increments(doc(v=0.25)) == [("f", "total", "0.25")]
    assert f.increments(doc(v=[1, 2, 3])) == [("i", "total", "6")]
    assert totals(f.increments(doc(v=[1, 0.5]))) == {"total": 1.5}
    assert f.increments(doc(v=[])) == [("i", "total", "0")]
    assert f.increments(doc()) == []  # no value: nothing to add
    assert sorted(f.increments(doc(v={"a": 2, "ü": 0.5}))) == [("f", f"total{SEP}ü", "0.5"),
                                                               ("i", f"total{SEP}a", "2")]


def test_sum_keeps_large_integers_exact() -> None:
    assert folder(sum="data.v").increments(doc(v=2**62 + 1)) == [("i", "x", str(2**62 + 1))]


def test_a_float_increment_round_trips() -> None:
    [(op, _, amount)] = folder(sum="data.v").increments(doc(v=0.1 + 0.2))
    assert op == "f" and float(amount) == 0.1 + 0.2


@pytest.mark.parametrize("value", ["two", True, None, [1, "2"], [True], {"a": "1"}, {"a": None}, float("inf"),
                                   float("nan"), [float("-inf")]])
def test_sum_of_a_non_number_is_a_value_error(value: Any) -> None:
    f = folder(sum="data.v")
    if value is None:  # a missing/null value adds nothing (the item still counts as arrived)
        assert f.increments(doc(v=value)) == []
        return
    with pytest.raises(ValueError, match="not a finite number"):
        f.increments(doc(v=value))


def test_sum_of_an_integer_beyond_any_float_is_a_value_error() -> None:
    """A JSON number such as 1e400 written out in digits parses as a Python int that no float (nor Redis'
    HINCRBYFLOAT) can hold: the item is refused (dead-lettered) like any other non-number, not a crash."""
    with pytest.raises(ValueError, match="not a finite number"):
        folder(sum="data.v").increments(doc(v=10**400))
    with pytest.raises(ValueError):
        folder(histogram="data.v", buckets=[0]).increments(doc(v=10**400))


def test_histogram_of_values_and_lists() -> None:
    f = folder("tags", histogram="data.v")
    assert f.increments(doc(v="red")) == [("i", f"tags{SEP}red", "1")]
    assert f.increments(doc(v=["red", "red", "blue", None])) == [("i", f"tags{SEP}red", "1")] * 2 + [
        ("i", f"tags{SEP}blue", "1")]
    assert f.increments(doc(v=7)) == [("i", f"tags{SEP}7", "1")]
    assert f.increments(doc(v=True)) == [("i", f"tags{SEP}true", "1")]
    assert f.increments(doc(v=2.5)) == [("i", f"tags{SEP}2.5", "1")]
    assert f.increments(doc(v=None)) == [] and f.increments(doc(v=[])) == []


@pytest.mark.parametrize("value", [{"a": 1}, [[1]], 2**60])
def test_histogram_of_an_uncountable_value_is_a_value_error(value: Any) -> None:
    with pytest.raises(ValueError, match="not a countable value"):
        folder(histogram="data.v").increments(doc(v=value))


@pytest.mark.parametrize(("x", "bucket"), [(-5, "<0"), (-0.001, "<0"), (0, "[0,2)"), (1.999, "[0,2)"),
                                           (2, "[2,4.5)"), (4.4, "[2,4.5)"), (4.5, ">=4.5"), (1e9, ">=4.5")])
def test_buckets_are_half_open(x: float, bucket: str) -> None:
    assert _bucket(x, [0, 2, 4.5]) == bucket
    assert folder("s", histogram="data.v", buckets=[0, 2, 4.5]).increments(doc(v=x)) == [("i", f"s{SEP}{bucket}",
                                                                                           "1")]


def test_one_edge_makes_two_buckets() -> None:
    assert [_bucket(x, [10]) for x in (9, 10, 11)] == ["<10", ">=10", ">=10"]


def test_buckets_of_a_non_number_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="not a finite number"):
        folder(histogram="data.v", buckets=[0, 1]).increments(doc(v="big"))


def test_top_orders_by_value_then_key() -> None:
    values = {"b": 3, "a": 3, "c": 5, "d": 1, "e": 3}
    assert top(values, 3) == [["c", 5], ["a", 3], ["b", 3]]
    assert top(values, 10) == [["c", 5], ["a", 3], ["b", 3], ["e", 3], ["d", 1]]
    assert top({"x": 0.5, "y": 2}, 1) == [["y", 2]] and top({}, 3) == []


@pytest.mark.parametrize(("text", "value"), [(b"3", 3), (b"-7", -7), (b"2.5", 2.5), (b"4", 4), (b"1e3", 1000),
                                             (b"9223372036854775807", 2**63 - 1), ("0.30000000000000004", 0.1 + 0.2)])
def test_numbers_read_back(text: bytes | str, value: float) -> None:
    got = number(text)
    assert got == value and type(got) is type(value)
