"""Safe trimming: never an entry still pending in, or not yet delivered to, any consumer group; acknowledged
entries go; a stream without groups is left alone."""

from __future__ import annotations

import uuid

import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.core.trim import SafeTrim

GROUPS = ("g1", "g2")


def stream_with_groups(client: redis.Redis, *groups: str) -> str:
    key = f"bm:{{t{uuid.uuid4().hex[:10]}}}:s:in"
    for group in groups:
        client.xgroup_create(key, group, id="0", mkstream=True)
    return key


def read_all(client: redis.Redis, key: str, group: str) -> list[bytes]:
    reply = client.xreadgroup(group, "c", {key: ">"})
    return [entry_id for entry_id, _ in reply[0][1]] if reply else []


def test_acknowledged_entries_are_removed(client: redis.Redis) -> None:
    key = stream_with_groups(client, *GROUPS)
    ids = [client.xadd(key, {"n": str(n)}) for n in range(5)]
    for group in GROUPS:
        assert read_all(client, key, group) == ids
        client.xack(key, group, *ids)
    assert SafeTrim(client)(key) == 5
    assert client.xlen(key) == 0


def test_the_slowest_group_holds_the_floor(client: redis.Redis) -> None:
    key = stream_with_groups(client, *GROUPS)
    ids = [client.xadd(key, {"n": str(n)}) for n in range(6)]
    read_all(client, key, "g1")
    client.xack(key, "g1", *ids)  # g1 is done with everything
    client.xreadgroup("g2", "c", {key: ">"}, count=4)
    client.xack(key, "g2", ids[0], ids[1], ids[3])  # g2: ids[2] pending, ids[4:] not delivered yet
    SafeTrim(client)(key)
    assert [entry_id for entry_id, _ in client.xrange(key)] == ids[2:]


def test_a_stream_without_groups_is_untouched(client: redis.Redis) -> None:
    key = f"bm:{{t{uuid.uuid4().hex[:10]}}}:s:in"
    for n in range(3):
        client.xadd(key, {"n": str(n)})
    assert SafeTrim(client)(key) == 0
    assert client.xlen(key) == 3


def test_a_missing_stream_is_not_an_error(client: redis.Redis) -> None:
    assert SafeTrim(client)(f"bm:{{t{uuid.uuid4().hex[:10]}}}:s:gone") == 0


OPS = st.one_of(
    st.tuples(st.just("add"), st.integers(1, 4)),
    st.tuples(st.just("read"), st.sampled_from(GROUPS), st.integers(1, 4)),
    st.tuples(st.just("ack"), st.sampled_from(GROUPS), st.integers(0, 10)),
    st.tuples(st.just("trim")),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(OPS, max_size=30))
def test_trim_never_drops_what_a_group_still_needs(client: redis.Redis, ops: list[tuple]) -> None:
    key = stream_with_groups(client, *GROUPS)
    trim = SafeTrim(client)
    added: list[bytes] = []
    acked: dict[str, set[bytes]] = {group: set() for group in GROUPS}
    pending: dict[str, list[bytes]] = {group: [] for group in GROUPS}
    for op in ops:
        if op[0] == "add":
            added += [client.xadd(key, {"n": "x"}) for _ in range(op[1])]
        elif op[0] == "read":
            reply = client.xreadgroup(op[1], "c", {key: ">"}, count=op[2])
            pending[op[1]] += [entry_id for entry_id, _ in reply[0][1]] if reply else []
        elif op[0] == "ack" and pending[op[1]]:
            entry_id = pending[op[1]].pop(op[2] % len(pending[op[1]]))
            client.xack(key, op[1], entry_id)
            acked[op[1]].add(entry_id)
        elif op[0] == "trim":
            trim(key)
    trim(key)
    remaining = {entry_id for entry_id, _ in client.xrange(key)}
    needed = {entry_id for entry_id in added if any(entry_id not in acked[g] for g in GROUPS)}
    assert needed <= remaining, f"trimmed entries a group still needs: {sorted(needed - remaining)}"
    fully_acked_prefix = []
    for entry_id in added:  # everything below the oldest still-needed entry must be gone
        if entry_id in needed:
            break
        fully_acked_prefix.append(entry_id)
    assert not remaining & set(fully_acked_prefix)
