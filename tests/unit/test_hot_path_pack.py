"""The worker's hold and commit skip two layers of redis-py's per-word Python work, with the same result:
core.wire.packed (hiredis in C) against redis-py's own packer, and core.fast_commit's read-ahead of plain
entries (`_plain_read`) against `parse_read` and the consumer's full decode path."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from redis._parsers import Encoder
from redis.connection import PythonRespSerializer

from services.core.batch_decode import _deliveries, deliveries
from services.core.fast_commit import _plain_read, parse_read
from services.core.item import FIELD, TO, WorkItem
from services.core.wire import packed

word = st.one_of(st.text(max_size=12), st.binary(max_size=12), st.integers(-(2**63), 2**63 - 1))
command = st.tuples(st.sampled_from(["HSET", "EVALSHA", "MULTI", "XACK"]), *([word] * 3)) | st.tuples(
    st.sampled_from(["EXEC", "MULTI"]))


@settings(max_examples=300)
@given(st.lists(command, min_size=1, max_size=6))
def test_packed_is_what_redis_py_sends(commands: list[tuple]) -> None:  # type: ignore[type-arg]
    ours = packed(commands)
    assert ours is not None and len(ours) == 1  # one buffer: one write
    reference = PythonRespSerializer(6000, Encoder("utf-8", "strict", False).encode)
    assert ours[0] == b"".join(b"".join(reference.pack(*c)) for c in commands)


def _item(i: int) -> bytes:
    return WorkItem(id=f"i{i}", data={"n": i}, batch="b").encode()[FIELD]


entry = st.integers(0, 40).map(lambda i: (f"1-{i}".encode(), [FIELD, _item(i)]))
odd = st.sampled_from([None, [FIELD, b"x", TO, b"work"], [b"other", b"x"], [TO, b"work", FIELD, b"{}"], []])


@settings(max_examples=300)
@given(st.lists(entry, max_size=8), st.booleans())
def test_a_plain_read_is_split_as_parse_read_splits_it(entries: list, resp3: bool) -> None:  # type: ignore[type-arg]
    reply = {b"s": entries} if resp3 else [[b"s", entries]]
    plain = _plain_read(reply)
    assert plain is not None
    assert plain == ([e for e, _ in parse_read(reply)], [f[FIELD] for _, f in parse_read(reply)])
    assert _deliveries(*plain, {}, 1) == deliveries(parse_read(reply), {})


@settings(max_examples=200)
@given(st.lists(entry, max_size=5), odd, st.lists(entry, max_size=5))
def test_any_other_entry_sends_the_read_down_the_full_path(before: list, fields: list | None,  # type: ignore[type-arg]
                                                            after: list) -> None:  # type: ignore[type-arg]
    assert _plain_read([[b"s", [*before, (b"9-9", fields), *after]]]) is None
