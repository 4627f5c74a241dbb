"""The router stage kinds of the spec and their expressions: naming of output streams, validation, which
expressions are simple enough to run server-side, keys, and the shard hash (pinned: changing it would move every
key to another shard across an upgrade)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.core.expressions import compile_expression, compile_predicate, route_key, truthy
from services.core.spec_routers import (
    ROUTER_SPECS,
    CopySpec,
    FilterSpec,
    MergeSpec,
    ShardSpec,
    SplitSpec,
)
from services.router import shard_hash, shard_of


def test_output_stream_names() -> None:
    assert CopySpec(input="in", to=["a", "b"]).outputs("fan") == ["fan.a", "fan.b"]
    assert FilterSpec(input="in", where="data.promo").outputs("promo") == ["promo"]
    split = SplitSpec(input="in", by="data.channel", routes={"sms": "sms", "mail": "email"}, default="email")
    assert split.outputs("notify") == ["notify.email", "notify.sms"]
    assert ShardSpec(input="in", key="id", shards=3).outputs("zones") == ["zones.0", "zones.1", "zones.2"]
    assert MergeSpec(inputs=["a", "b"]).outputs("all") == ["all"]
    assert CopySpec(input="in", to=["a"]).inputs == ["in"]
    assert MergeSpec(inputs=["a", "b"]).inputs == ["a", "b"]
    assert set(ROUTER_SPECS) == {"copy", "filter", "split", "shard", "merge"}


@pytest.mark.parametrize("model, body, where", [
    (FilterSpec, {"input": "in", "where": "data.x =="}, "where"),
    (FilterSpec, {"input": "in", "where": "lenght(data)"}, "where"),
    (FilterSpec, {"input": "in", "where": "  "}, "where"),
    (SplitSpec, {"input": "in", "by": "data[", "default": "x"}, "by"),
    (ShardSpec, {"input": "in", "key": "data.'", "shards": 2}, "key"),
])
def test_bad_expressions_are_rejected_with_the_field(model: type, body: dict[str, object], where: str) -> None:
    with pytest.raises(ValidationError) as info:
        model.model_validate(body)
    error = info.value.errors()[0]
    assert error["loc"] == (where,) and "bad expression" in error["msg"]


@pytest.mark.parametrize("model, body", [
    (SplitSpec, {"input": "in", "by": "data.kind", "routes": {"a": "a"}}),  # no default: a splitter never drops
    (CopySpec, {"input": "in", "to": []}),
    (CopySpec, {"input": "in", "to": ["a", "a"]}),
    (CopySpec, {"input": "in", "to": ["Bad Name"]}),
    (ShardSpec, {"input": "in", "key": "id", "shards": 0}),
    (ShardSpec, {"input": "in", "key": "id", "shards": 2, "max_backlog": 0}),
    (MergeSpec, {"inputs": ["a", "a"]}),
    (MergeSpec, {"inputs": []}),
    (FilterSpec, {"input": "in", "where": "id", "extra": 1}),
])
def test_invalid_specs(model: type, body: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        model.model_validate(body)


def test_compile_expression_raises_value_error() -> None:
    with pytest.raises(ValueError, match=r"^bad expression 'a ==': .*column 4\)$"):
        compile_expression("a ==")


@pytest.mark.parametrize("text, simple", [
    ("data.channel == 'sms'", True),
    ("data.promo", True),
    ("!data.promo", False),  # parses as (!data).promo: not a plain path
    ("!(data.promo)", True),
    ("data.age >= `18` && data.country != 'xx'", True),
    ("name", True),
    ("`1` < data.n", True),
    ("data.a.b.c == `null`", True),
    ("data.name > 'm'", False),  # string ordering: Lua would use the locale
    ("data.a == data.b", False),  # two paths: possibly two containers
    ("data.tags[0]", False),
    ("contains(data.tags, 'x')", False),
    ("data.n == `9007199254740993`", False),  # not exact as a Lua double
    ("data.x == `[1]`", False),
])
def test_simple_expressions(text: str, simple: bool) -> None:
    assert compile_expression(text).simple is simple


def test_expression_semantics() -> None:
    doc = {"id": "u1", "name": "u1", "data": {"channel": "sms", "n": 3, "tags": []}, "version": None, "batch": None}
    assert compile_expression("data.channel < `1`").search(doc) is None  # jmespath alone raises TypeError here
    assert compile_expression("!(data.channel < `1`)").search(doc) is True
    assert compile_expression("length(data.n)").search(doc) is None  # a failing function: null
    keep = compile_predicate("data.n > `2` && data.channel == 'sms'")
    assert keep(doc) and not keep({**doc, "data": {"n": 1}})
    assert [truthy(v) for v in (0, "", [], {}, None, False, "x", [0])] == [True, False, False, False, False,
                                                                          False, True, True]


@pytest.mark.parametrize("value, key", [
    ("sms", "sms"), ("", ""), (True, "true"), (False, "false"), (3, "3"), (3.0, "3"), (-0.0, "0"), (3.5, None),
    (None, None), ([1], None), ({"a": 1}, None), (2**53, None), (2**53 - 1, str(2**53 - 1)),
])
def test_route_keys(value: object, key: str | None) -> None:
    assert route_key(value) == key


def test_shard_hash_is_pinned() -> None:
    # SHA-1 of the key: first 8 hex digits pick the shard, the next 8 the spill target (Lua: redis.sha1hex).
    assert shard_hash("user-1") == (0x9DFFFE45, 0x0852C20C)
    assert [shard_of(k, 3) for k in ("a", "b", "c", "user-1")] == [
        0x86F7E437 % 3, 0xE9D71F5E % 3, 0x84A51684 % 3, 0x9DFFFE45 % 3]
