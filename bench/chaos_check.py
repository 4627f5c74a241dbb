"""The chaos harness's checker: what a run did, judged from Redis and the outputs against ground truth computed
on its own from the input file (examples/chaos/generate.py's records; the worker's digest recomputed here).

- **Exactly once per stream.** Every stream between stages (the source stream, the sharder's shards, the work
  stages' outputs, the merger's and the copier's outputs) is read whole with XRANGE: the harness creates an
  extra consumer group, `chaos-audit`, on each of them before the run starts and never reads with it, so safe
  trimming (core.trim) keeps every entry. Each item id must appear exactly once per stream, or per stream group
  (an id in both shards is a duplicate; so is one in both work stages' outputs). Entries addressed to one stage
  (a retry or a replay: field `to`) are counted apart, never as duplicates.
- **Lost** = ids of the input missing from the last streams (fanout.*), from the reduce's folded set, or not
  `done` in the state hash.
- **Reduce** = the ground truth: count, sum of values, sum of digests, histogram of kinds, in Redis and in the
  file it wrote (`final: true`).
- **Join**: exactly one batch-complete event from it, for a batch holding every item, emitted after the last item
  reached its input (the event's entry id is later than the input's last entry id: both are Redis's clock) and
  fired (its state's `fired` time) no earlier than that last entry.
- No dead letters anywhere."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import redis

from services.core import Keys
from services.core.barriers import aggregate
from services.core.item import TO
from services.core.spec import Pipeline

AUDIT_GROUP = "chaos-audit"
# Stream groups whose union must hold every item once: the shards together, the work stages' outputs together.
GROUPS = {"source": ["source"], "shards": ["shards.0", "shards.1"], "work": ["work-0", "work-1"],
          "merged": ["merged"], "fanout.totals": ["fanout.totals"], "fanout.done": ["fanout.done"]}
REDUCER, JOINER = "totals", "done"


def audited_streams() -> list[str]:
    return [s for streams in GROUPS.values() for s in streams]


def create_audit_groups(client: redis.Redis, pipeline: Pipeline) -> None:
    """Before the run: one idle consumer group per audited stream, so nothing in them is trimmed."""
    keys = Keys(pipeline.name)
    for stream in audited_streams():
        try:
            client.xgroup_create(keys.stream(stream), AUDIT_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise


def truth(items_file: Path) -> dict[str, Any]:
    """The expected aggregate, from the input file alone."""
    ids: list[str] = []
    value = digest = 0
    kinds: Counter[str] = Counter()
    for line in items_file.read_text().splitlines():
        record = json.loads(line)
        ids.append(record["name"])
        value += record["value"]
        digest += int(hashlib.sha256(f"{record['name']}:{record['value']}".encode()).hexdigest()[:8], 16) % 1000
        kinds[record["kind"]] += 1
    return {"ids": ids, "aggregate": {"items": len(ids), "value": value, "digest": digest,
                                      "kinds": dict(sorted(kinds.items()))}}


def _entry_ms(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-")[0])


def scan_stream(client: redis.Redis, key: str, chunk: int = 10_000) -> tuple[Counter[str], int, int]:
    """(occurrences per item id, entries addressed to one stage, last entry's ms) of a whole stream."""
    seen: Counter[str] = Counter()
    addressed, last, start = 0, 0, "-"
    while True:
        rows = client.xrange(key, min=start, max="+", count=chunk)
        if not rows:
            break
        for _entry_id, fields in rows:
            if TO in fields:
                addressed += 1
                continue
            seen[json.loads(fields[b"item"])["id"]] += 1
        last = _entry_ms(rows[-1][0])
        start = "(" + rows[-1][0].decode()
        if len(rows) < chunk:
            break
    return seen, addressed, last


def check(client: redis.Redis, pipeline: Pipeline, items_file: Path, out_dir: Path) -> dict[str, Any]:
    keys = Keys(pipeline.name)
    expected = truth(items_file)
    ids = set(expected["ids"])
    n = len(ids)
    streams: dict[str, Any] = {}
    last_ms: dict[str, int] = {}
    duplicates = lost = 0
    for group, members in GROUPS.items():
        union: Counter[str] = Counter()
        addressed = 0
        for stream in members:
            seen, to_one, last = scan_stream(client, keys.stream(stream))
            union.update(seen)
            addressed += to_one
            last_ms[stream] = last
        dup = sum(c - 1 for c in union.values() if c > 1)
        missing = len(ids - set(union))
        streams[group] = {"entries": sum(union.values()), "distinct": len(union), "duplicates": dup,
                          "missing": missing, "foreign": len(set(union) - ids), "addressed_to_one_stage": addressed}
        duplicates += dup
        if group.startswith("fanout"):
            lost = max(lost, missing)
    batches = [b.decode() for b in client.zrange(keys.batches(), 0, -1)]
    folded: set[str] = set()
    per_batch = []
    for batch in batches:
        members = {m.decode() for m in client.smembers(keys.barrier(REDUCER, batch, "in"))}
        folded |= members
        state = {k.decode(): v.decode() for k, v in client.hgetall(keys.barrier(JOINER, batch, "state")).items()}
        per_batch.append({"batch": batch, "items": int(client.scard(keys.batch_items(batch))),
                          "complete": client.hget(keys.manifest(batch), "complete") in (b"1", "1"),
                          "reduce_folded": len(members), "join_fired": state.get("fired")})
    lost = max(lost, len(ids - folded))
    states = client.hgetall(keys.states())
    not_done = sum(1 for i in ids if states.get(i.encode()) != b"done")
    lost = max(lost, not_done)
    dead = {stage: int(client.xlen(keys.dead_letters(stage))) for stage in pipeline.stages}

    # the reduce: one aggregate per batch that had items; summed over them, it must equal the truth
    operators = {name: fold.operator for name, fold in pipeline.stages[REDUCER].body.fold.items()}
    aggs = [aggregate(client, keys, REDUCER, b["batch"], operators) for b in per_batch if b["reduce_folded"]]
    redis_agg = aggs[0] if len(aggs) == 1 else {"batches": len(aggs), "parts": aggs}
    try:
        written = json.loads((out_dir / "totals.json").read_text())
    except (OSError, ValueError):
        written = {}
    reduce_ok = redis_agg == expected["aggregate"] and written.get("final") is True \
        and written.get("aggregate") == expected["aggregate"]

    # the join: its events on the pipeline's events stream
    events = [(entry_id, json.loads(fields[b"event"])) for entry_id, fields in client.xrange(keys.events())]
    joins = [(eid, e) for eid, e in events if e.get("stage") == JOINER]
    join: dict[str, Any] = {"events": len(joins), "items": [e.get("items") for _, e in joins],
                            "done": [e.get("done") for _, e in joins]}
    last_in = last_ms["fanout.done"]
    if joins:
        eid, event = joins[0]
        fired = client.hget(keys.barrier(JOINER, event["batch"], "state"), "fired")
        join.update(event_ms=_entry_ms(eid), last_input_ms=last_in,
                    fired_ms=int(float(fired) * 1000) if fired else None)
    join_ok = (len(joins) == 1 and joins[0][1].get("items") == n and joins[0][1].get("done") == n
               and join["event_ms"] >= last_in and join["fired_ms"] is not None
               and join["fired_ms"] + 1 >= last_in)  # fired: a float of seconds from the barrier's clock
    return {"items": n, "duplicates": duplicates, "lost": lost, "dead_letters": sum(dead.values()),
            "dead_letters_per_stage": {k: v for k, v in dead.items() if v},
            "reduce_exact": reduce_ok, "join_once_after_all": join_ok, "join": join,
            "reduce": {"expected": expected["aggregate"], "redis": redis_agg,
                       "file": {k: written.get(k) for k in ("final", "items", "done", "aggregate")}},
            "batches": per_batch, "streams": streams,
            "ok": duplicates == 0 and lost == 0 and reduce_ok and join_ok and not any(dead.values())}
