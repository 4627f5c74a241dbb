"""Dead-letter streams: one per stage, each entry the item as it was, why it failed, and how often it was tried."""

from __future__ import annotations

import time
from dataclasses import dataclass

from redis import Redis
from redis.client import Pipeline

from .item import FIELD, WorkItem
from .keys import BATCH_TTL_S, Keys
from .masking import scrub


@dataclass(frozen=True)
class DeadLetter:
    entry_id: str
    stage: str
    stream: str
    reason: str
    deliveries: int
    raw_item: bytes
    at: float

    @property
    def item_id(self) -> str | None:
        item = _decoded(self.raw_item)
        return item.id if item is not None else None


def _decoded(raw_item: bytes) -> WorkItem | None:
    try:
        return WorkItem.decode({FIELD: raw_item})
    except ValueError:
        return None


def add_dead_letter(
    pipe: Pipeline, keys: Keys, *, stage: str, stream: str, raw_item: bytes, reason: str, deliveries: int
) -> None:
    """Queue the XADD on a transaction pipeline: it commits together with the XACK of the original. An item of a
    batch is also noted in the batch's dead set of this stage, so barriers downstream stop waiting for it."""
    item = _decoded(raw_item)
    if item is not None and item.batch:
        pipe.sadd(keys.batch_dead(item.batch, stage), item.id)
        pipe.expire(keys.batch_dead(item.batch, stage), BATCH_TTL_S)
    pipe.xadd(
        keys.dead_letters(stage),
        {
            FIELD: raw_item,
            b"reason": scrub(reason).encode()[:4000],  # no secret of ours in a reason (core.masking)
            b"stream": stream.encode(),
            b"deliveries": str(deliveries).encode(),
            b"at": f"{time.time():.3f}".encode(),
        },
    )


def list_dead_letters(client: Redis, keys: Keys, stage: str, count: int = 1000, start: str = "-") -> list[DeadLetter]:
    """The first `count` dead letters of a stage, from the entry id `start` on (a time: `<ms>-0`)."""
    out = []
    for entry_id, fields in client.xrange(keys.dead_letters(stage), min=start, count=count):
        out.append(
            DeadLetter(
                entry_id=entry_id.decode(),
                stage=stage,
                stream=fields.get(b"stream", b"").decode(),
                reason=fields.get(b"reason", b"").decode(errors="replace"),
                deliveries=int(fields.get(b"deliveries", b"0")),
                raw_item=fields.get(FIELD, b""),
                at=float(fields.get(b"at", b"0")),
            )
        )
    return out


def dead_letter_stages(client: Redis, keys: Keys) -> list[str]:
    prefix = keys.dead_letters("")
    return sorted(k.decode()[len(prefix):] for k in client.scan_iter(match=f"{prefix}*", count=1000))


# One dead letter back on its stream, atomically and at most once: the XDEL decides. Of two replayers racing for
# the same entry only the one whose XDEL removed it puts the item back, so every dead letter moves exactly once
# whoever runs `dlq replay` (a MULTI could not make the XADD depend on the XDEL's reply). Keys' types are checked
# before the first write: a script has no rollback.
# KEYS: 1 dead-letter stream, 2 the stream it came from, 3 arrivals hash, 4 progress states, 5 progress counts,
#       6 derived ids (progress ignores those), 7 the batch's dead set of this stage (KEYS[1] when no batch).
# ARGV: 1 dead-letter entry id, 2 the item to put back, 3 the stage it is addressed to, 4 the item id.
# Returns 1 if this call moved it, 0 if it was gone (replayed by someone else, or never there).
_REPLAY = """
for i, want in ipairs({'stream', 'stream', 'hash', 'hash', 'hash', 'set', 'set'}) do
  local t = redis.call('TYPE', KEYS[i])['ok']
  if t ~= 'none' and t ~= want and not (i == 7 and KEYS[7] == KEYS[1]) then
    return redis.error_reply('WRONGTYPE key ' .. KEYS[i] .. ' holds a ' .. t .. ', not a ' .. want ..
                             ': nothing was replayed')
  end
end
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('XADD', KEYS[2], '*', 'item', ARGV[2], 'to', ARGV[3])
redis.call('HINCRBY', KEYS[3], KEYS[2], 1)
local id = ARGV[4]  -- state back to queued: the rule of core.progress with force
local old = redis.call('HGET', KEYS[4], id)
if old ~= 'queued' and (old or redis.call('SISMEMBER', KEYS[6], id) == 0) then
  redis.call('HSET', KEYS[4], id, 'queued')
  if old then redis.call('HINCRBY', KEYS[5], old, -1) end
  redis.call('HINCRBY', KEYS[5], 'queued', 1)
end
if KEYS[7] ~= KEYS[1] then redis.call('SREM', KEYS[7], id) end  -- in flight again: a barrier waits for it
return 1
"""
REPLAY_PAGE = 500  # dead letters read, and replay scripts sent in one round trip (each script is atomic alone)


def replay(client: Redis, keys: Keys, stage: str, entry_ids: list[str] | None = None,
           replayed: list[WorkItem] | None = None) -> int:
    """Put dead letters back on the stream they came from, with a fresh delivery budget. Returns how many THIS
    call moved.

    Each move (XDEL from the dead-letter stream, XADD back, state back to queued) is one server-side script that
    puts the item back only if its XDEL removed the dead letter: an entry is never both replayed and still
    dead-lettered, and of several replays running at once (two `batchmesh dlq replay`, or one racing a script)
    each dead letter is moved by exactly one, which alone counts it. The replay is addressed to `stage`: other
    stages reading the same stream already had the item. Malformed items cannot be replayed and stay. A barrier
    that already fired for the item's batch folds the replayed item as late (router.barrier). Each item put back
    is appended to `replayed` if given. `entry_ids` limits it to those dead-letter entry ids."""
    script = client.register_script(_REPLAY)
    wanted = set(entry_ids) if entry_ids is not None else None
    dead_key = keys.dead_letters(stage)
    moved, start = 0, "-"
    while True:
        page = list_dead_letters(client, keys, stage, count=REPLAY_PAGE, start=start)
        if not page:
            return moved
        start = f"({page[-1].entry_id}"
        todo = []
        pipe = client.pipeline(transaction=False)
        for letter in page:
            item = _decoded(letter.raw_item)
            if item is None or (wanted is not None and letter.entry_id not in wanted):
                continue
            fresh = item.model_copy(update={"attempts": 0, "error": None})
            batch_dead = keys.batch_dead(item.batch, stage) if item.batch else dead_key
            script(keys=[dead_key, letter.stream, keys.arrivals(), keys.states(), keys.counts(), keys.derived(),
                         batch_dead],
                   args=[letter.entry_id, fresh.encode()[FIELD], stage, item.id], client=pipe)
            todo.append(item)
        for item, done in zip(todo, pipe.execute() if todo else [], strict=True):
            if int(done):
                moved += 1
                if replayed is not None:
                    replayed.append(item)
