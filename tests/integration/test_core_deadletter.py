"""Failures: a failed attempt is retried as a new entry (attempts + 1, the reason), at the cap it is dead-lettered
with the reason; dead letters are listed and replayed; progress counts stay exact through all of it."""

from __future__ import annotations

import uuid
from collections import Counter

import redis
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from services.core import (
    DEAD,
    DONE,
    FAILED,
    QUEUED,
    RUNNING,
    STATES,
    Keys,
    Progress,
    Settings,
    StreamConsumer,
    WorkItem,
    list_dead_letters,
    replay,
)
from services.core.item import FIELD, TO
from services.core.stage import Commit, Delivery


def consumer(client: redis.Redis, settings: Settings, stage: str = "work") -> StreamConsumer:
    return StreamConsumer(client, settings, stage=stage, input_stream="in", consumer=f"{stage}-1")


def add(client: redis.Redis, settings: Settings, item: WorkItem) -> None:
    client.xadd(Keys(settings.pipeline).stream("in"), item.encode())


def fail_all(c: StreamConsumer, reason: str) -> list[Delivery]:
    batch = c.read(block_ms=0)
    commit = Commit()
    for d in batch:
        commit.fail(d, reason)
    c.commit(commit)
    return batch


def test_a_failure_is_retried_as_a_new_entry_with_the_attempt_and_reason(
    client: redis.Redis, settings: Settings
) -> None:
    keys = Keys(settings.pipeline)
    c = consumer(client, settings)
    add(client, settings, WorkItem(id="a", data={"x": 1}))
    (first,) = fail_all(c, "boom: exit code 1")
    assert client.xpending(c.stream_key, "work")["pending"] == 0, "the failed entry is acknowledged"
    (_, fields), = client.xrange(c.stream_key, min=f"({first.entry_id.decode()}", max="+")
    retry = WorkItem.decode(fields)
    assert (retry.attempts, retry.error, retry.data) == (1, "boom: exit code 1", {"x": 1})
    assert fields[TO] == b"work"
    assert Progress(client, keys).state_of("a") == FAILED
    assert client.hget(keys.stage_stats("work"), "failed") == b"1"
    (again,) = c.read(block_ms=0)
    assert again.deliveries == 2 and again.item is not None and again.item.error == "boom: exit code 1"


def test_at_the_cap_a_failure_is_dead_lettered_with_the_reason(client: redis.Redis, settings: Settings) -> None:
    keys = Keys(settings.pipeline)
    c = consumer(client, settings)
    add(client, settings, WorkItem(id="a"))
    for attempt in range(1, settings.max_deliveries + 1):
        (d,) = fail_all(c, f"boom {attempt}")
        assert d.deliveries == attempt
    assert c.read(block_ms=0) == [], "no retry past the cap"
    (letter,) = list_dead_letters(client, keys, "work")
    assert (letter.item_id, letter.reason, letter.deliveries) == ("a", "boom 3", 3)
    assert letter.stream == c.stream_key
    assert Progress(client, keys).state_of("a") == DEAD
    assert Progress(client, keys).counts()[DEAD] == 1 and Progress(client, keys).counts()[FAILED] == 0


def test_a_retry_is_not_run_again_by_other_stages_reading_the_stream(
    client: redis.Redis, settings: Settings
) -> None:
    work, other = consumer(client, settings, "work"), consumer(client, settings, "other")
    add(client, settings, WorkItem(id="a"))
    assert [d.item.id for d in other.read(block_ms=0) if d.item] == ["a"]
    fail_all(work, "boom")
    assert other.read(block_ms=0) == [], "the retry is for 'work' only"
    assert client.xpending(other.stream_key, "other")["pending"] == 1, "only the original, not the retry"
    assert [d.deliveries for d in work.read(block_ms=0)] == [2]


def test_a_malformed_entry_is_dead_lettered_and_never_replayed(client: redis.Redis, settings: Settings) -> None:
    keys = Keys(settings.pipeline)
    c = consumer(client, settings)
    client.xadd(c.stream_key, {FIELD: b'{"id": ""}'})
    (d,) = fail_all(c, "cannot run")
    assert d.item is None and d.malformed is not None and "id" in d.malformed
    (letter,) = list_dead_letters(client, keys, "work")
    assert letter.item_id is None and letter.raw_item == b'{"id": ""}'
    assert replay(client, keys, "work") == 0
    assert len(list_dead_letters(client, keys, "work")) == 1


def test_replay_puts_the_item_back_fresh_and_removes_the_dead_letter(
    client: redis.Redis, settings: Settings
) -> None:
    keys = Keys(settings.pipeline)
    work, other = consumer(client, settings, "work"), consumer(client, settings, "other")
    add(client, settings, WorkItem(id="a", data={"x": 1}))
    add(client, settings, WorkItem(id="b"))
    other.read(block_ms=0)
    for _ in range(settings.max_deliveries):
        fail_all(work, "boom")
    letters = list_dead_letters(client, keys, "work")
    assert sorted(letter.item_id or "" for letter in letters) == ["a", "b"]
    a_letter = next(letter for letter in letters if letter.item_id == "a")
    assert replay(client, keys, "work", entry_ids=[a_letter.entry_id]) == 1
    assert [letter.item_id for letter in list_dead_letters(client, keys, "work")] == ["b"]
    progress = Progress(client, keys)
    assert progress.state_of("a") == QUEUED and progress.state_of("b") == DEAD
    (d,) = work.read(block_ms=0)
    assert d.item is not None and (d.item.id, d.item.attempts, d.item.error, d.item.data) == ("a", 0, None, {"x": 1})
    assert d.deliveries == 1, "a fresh delivery budget"
    assert other.read(block_ms=0) == [], "the replay is for the stage that dead-lettered it"


# -- progress: counts stay equal to a recount of the states hash -------------------------------------------------

ITEMS = st.sampled_from(["i0", "i1", "i2", "i3"])
ACTION = st.tuples(ITEMS, st.sampled_from(["complete", "fail", "running", "requeue"]), st.integers(1, 4))


def _model(states: dict[str, str], batch: list[tuple[str, str, int]], cap: int) -> None:
    """What one commit (plus the out-of-commit marks) should do, in core's order: failed, done, dead."""
    def mark(ids: list[str], state: str, force: bool = False) -> None:
        for i in ids:
            if force or states.get(i) not in (DONE, DEAD):
                states[i] = state

    for item_id, action, _ in batch:
        if action == "running":
            mark([item_id], RUNNING)
        elif action == "requeue":
            mark([item_id], QUEUED, force=True)
    fails = [(i, n) for i, a, n in batch if a == "fail"]
    mark([i for i, n in fails if n < cap], FAILED)
    mark([i for i, a, _ in batch if a == "complete"], DONE)
    mark([i for i, n in fails if n >= cap], DEAD)


@hyp_settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(ACTION, min_size=1, max_size=4), min_size=1, max_size=8))
def test_progress_counts_match_a_recount_of_the_states(
    client: redis.Redis, settings: Settings, batches: list[list[tuple[str, str, int]]]
) -> None:
    s = settings.model_copy(update={"pipeline": f"p{uuid.uuid4().hex[:10]}"})
    keys, c = Keys(s.pipeline), consumer(client, s)
    progress, expected = Progress(client, keys), {}
    for n, batch in enumerate(batches):
        commit = Commit()
        for k, (item_id, action, deliveries) in enumerate(batch):
            d = Delivery(f"{n + 1}-{k + 1}".encode(), WorkItem(id=item_id), deliveries)
            if action == "complete":
                commit.record(d, b"{}")
            elif action == "fail":
                commit.fail(d, "boom")
            elif action == "running":
                progress.mark([item_id], RUNNING)
            else:
                progress.mark([item_id], QUEUED, force=True)
        c.commit(commit)
        _model(expected, batch, s.max_deliveries)
        recount = Counter(v.decode() for v in client.hvals(keys.states()))
        assert progress.counts() == {state: recount.get(state, 0) for state in STATES}
        assert {k.decode(): v.decode() for k, v in client.hgetall(keys.states()).items()} == expected
