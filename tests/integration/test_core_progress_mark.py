"""core.progress's state script, marking a whole batch in one call: the states and the counts it leaves are those
of marking the ids one by one (repeated ids, done/dead kept unless forced, derived ids ignored, > one HSET chunk)."""

from __future__ import annotations

import uuid
from collections import Counter

import redis

from services.core import Keys, Progress
from services.core.progress import DEAD, DONE, FAILED, QUEUED, RUNNING, STATES


def _states(client: redis.Redis, keys: Keys) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in client.hgetall(keys.states()).items()}


def test_one_call_for_a_batch_equals_one_call_per_id(client: redis.Redis) -> None:
    ids = [f"i{n}" for n in range(1200)]  # more than one HSET chunk (500 fields)
    steps = [
        (ids, QUEUED, True), (ids[:700] + ids[:10], RUNNING, False), (ids[:300], DONE, False),
        (ids[290:310] + ["derived-1", "i5", "i5"], DEAD, False), (ids[:400], FAILED, False),
        (ids[0:3], QUEUED, True), (["new-1", "new-1", "derived-1"], RUNNING, False),
    ]
    batch, single = Keys(f"p{uuid.uuid4().hex[:8]}"), Keys(f"p{uuid.uuid4().hex[:8]}")
    for keys in (batch, single):
        client.sadd(keys.derived(), "derived-1")
    changed_batch, changed_single = [], []
    for step_ids, state, force in steps:
        changed_batch.append(Progress(client, batch)._set_state(
            keys=[batch.states(), batch.counts(), batch.derived()],
            args=[state, "force" if force else "keep-terminal", *step_ids]))
        changed_single.append(sum(Progress(client, single)._set_state(
            keys=[single.states(), single.counts(), single.derived()],
            args=[state, "force" if force else "keep-terminal", i]) for i in step_ids))
    assert changed_batch == changed_single
    assert _states(client, batch) == _states(client, single)
    counts = Progress(client, batch).counts()
    assert counts == Progress(client, single).counts()
    recount = Counter(_states(client, batch).values())
    assert counts == {state: recount.get(state, 0) for state in STATES}
    assert counts[DONE] == 297 and counts[DEAD] == 10 and "derived-1" not in _states(client, batch)
