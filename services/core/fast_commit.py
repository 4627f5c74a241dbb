"""A stage's common commit as ONE server-side script, with the next read folded in.

The usual batch outcome — every item completed: outputs published (or a sink's results recorded and the items
marked done), the entries acknowledged and un-held, the stage's counters raised — is applied by `_COMMIT` in one
atomic call instead of a type-check round trip followed by MULTI/EXEC. Same effects, same guarantees, and two
checks get stronger:

- the keys' types (core.guard) are checked inside the script, before its first write, so no foreign writer can
  change a type between the check and the writes (the MULTI path has that window);
- a commit that publishes to another stage checks, also inside the script, that every entry it acknowledges is
  still pending under this consumer (core.rewind's stale-commit rule), atomically with the acknowledgement.

Like MULTI/EXEC, a command failing at run time for a value-level reason (HINCRBY on a non-integer) fails alone and
the rest is applied: the script counts such failures and the stage reports a partially applied commit, as before.
Nothing here is ever re-sent (core.guard.require_no_retry); a NOSCRIPT reply means nothing ran, and only then is
the script loaded and called again (redis-py's Script does that).

The script runs inside MULTI/EXEC (one write: MULTI, EVALSHA, EXEC), so what AOF and replicas see is one
transaction as before. If the caller asks for it, the next batch of new entries is read in the same write, right
after EXEC (XREADGROUP without BLOCK): one round trip per batch where there were three (type check, EXEC, read).
A read that fails (NOGROUP) is reported apart: the commit stands. Retries, dead letters and extra actions take
the MULTI path (core.stage.StreamConsumer.commit) unchanged."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from redis import Redis
from redis.exceptions import NoScriptError, ResponseError

from .guard import CommitError
from .item import FIELD
from .progress import DONE, MARK_STATE_LUA
from .rewind import StaleCommit
from .wire import Wire, packed

if TYPE_CHECKING:
    from .batch import Commit, Delivery
    from .stage import StreamConsumer

log = logging.getLogger(__name__)

# KEYS: 1 input stream, 2 states, 3 counts, 4 derived, 5 held, 6 results, 7 stats, 8 arrivals, 9.. output streams.
# ARGV: 1 group, 2 consumer, 3 stale check (1/0), 4 (unused), 5 expected type of each key (one
# letter per key: s stream, h hash, S set, - unused), 6 acks n, 7 live n (-1: the acks), 8 results n, 9 results
# given (1) or all "{}" (0), 10 stats n, 11 outputs n; then the acks, the live ids (unless -1), the result ids
# (with their values if given), the stats (field, increment), the outputs (key index, encoded item).
# Returns {"type", key, actual, wanted} | {"stale", n, of} | {"ok", failed, commands, first error}.
_COMMIT = MARK_STATE_LUA + """
local TYPES = {s = 'stream', h = 'hash', S = 'set'}
local spec = ARGV[5]
for i = 1, #spec do
  local want = TYPES[string.sub(spec, i, i)]
  if want then
    local actual = redis.call('TYPE', KEYS[i])['ok']
    if actual ~= 'none' and actual ~= want then return {'type', KEYS[i], actual, want} end
  end
end
local group, consumer = ARGV[1], ARGV[2]
local nacks, nlive, nres, given, nstats, nout = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]),
  ARGV[9] == '1', tonumber(ARGV[10]), tonumber(ARGV[11])
local p = 12
local acks = {}
for i = 1, nacks do acks[i] = ARGV[p]; p = p + 1 end
local live = acks
if nlive >= 0 then
  live = {}
  for i = 1, nlive do live[i] = ARGV[p]; p = p + 1 end
end
if ARGV[3] == '1' then
  local stale = 0
  for _, id in ipairs(live) do
    local row = redis.call('XPENDING', KEYS[1], group, id, id, 1)[1]
    if not row or row[2] ~= consumer then stale = stale + 1 end
  end
  if stale > 0 then return {'stale', stale, #live} end
end
local failed, commands, first = 0, 0, ''
local function run(...)
  commands = commands + 1
  local r = redis.pcall(...)
  if type(r) == 'table' and r.err then
    failed = failed + 1
    if first == '' then first = r.err end
  end
  return r
end
local CHUNK = 500
local function chunked(cmd, key, list, width)
  for s = 1, #list, CHUNK * width do
    run(cmd, key, unpack(list, s, math.min(s + CHUNK * width - 1, #list)))
  end
end
local ids, pairs_ = {}, {}
for i = 1, nres do
  local id = ARGV[p]; p = p + 1
  local value = '{}'
  if given then value = ARGV[p]; p = p + 1 end
  ids[i] = id
  pairs_[#pairs_ + 1] = id
  pairs_[#pairs_ + 1] = value
end
local stats = {}
for i = 1, nstats do stats[i] = {ARGV[p], ARGV[p + 1]}; p = p + 2 end
local added = {}
for i = 1, nout do
  local k = tonumber(ARGV[p])
  run('XADD', KEYS[k], '*', 'item', ARGV[p + 1])
  added[k] = (added[k] or 0) + 1
  p = p + 2
end
for s = 1, #live, CHUNK do run('XACK', KEYS[1], group, unpack(live, s, math.min(s + CHUNK - 1, #live))) end
if #acks > 0 then chunked('HDEL', KEYS[5], acks, 1) end
for k, n in pairs(added) do run('HINCRBY', KEYS[8], KEYS[k], n) end
for _, s in ipairs(stats) do run('HINCRBY', KEYS[7], s[1], s[2]) end
if nres > 0 then
  chunked('HSET', KEYS[6], pairs_, 2)
  mark_state(run, KEYS[2], KEYS[3], KEYS[4], 'done', true, ids, 1)  -- core.progress's rule, keep-terminal
end
return {'ok', failed, commands, first}
"""
assert DONE == "done"


class FastCommitCall:
    """One prepared call of the commit script (what `StreamConsumer._execute` runs on this path)."""

    __slots__ = ("client", "script", "keys", "args", "consumer", "read", "entries", "read_error")

    def __init__(self, client: Redis, script: Any, keys: list[str], args: list[Any], consumer: str,
                 read: tuple[str, str, int] | None) -> None:
        self.client, self.script, self.keys, self.args, self.consumer = client, script, keys, args, consumer
        self.read, self.entries, self.read_error = read, None, None

    def execute(self, stage: str) -> None:
        """Run it once, and the read after it (same round trip). Raises CommitError (nothing written: a key of the
        wrong type, or the script did not run; `partial`: some commands failed at run time), or StaleCommit
        (entries no longer ours: nothing written). The read's raw reply is left in `entries` (its error, e.g.
        NOGROUP, in `read_error`: the commit stands)."""
        reply = self._send("EVALSHA", self.script.sha, read=self.read is not None)
        if isinstance(reply, NoScriptError):  # not run, nothing written (the read is kept): send it whole, once
            reply = self._send("EVAL", self.script.script, read=False)
        if isinstance(reply, ResponseError):
            if "NOGROUP" in str(reply):  # the stale check met no group (before any write): as the MULTI path's
                raise reply  # check raises it, for the role's loop to re-create the group (core.reconnect)
            raise CommitError(f"transaction aborted, nothing was committed: {reply}", partial=False) from reply
        kind = _text(reply[0])
        if kind == "type":
            raise CommitError(f"key {_text(reply[1])!r} holds a {_text(reply[2])}, not a {_text(reply[3])}: nothing "
                              "was committed", partial=False)
        if kind == "stale":
            raise StaleCommit(f"{reply[1]} of the {reply[2]} entries this commit acknowledges are no longer pending "
                              f"under {self.consumer} (Redis restarted from an older state, or another consumer "
                              "reclaimed them): nothing was committed")
        if int(reply[1]):
            error = _text(reply[3])
            log.error("commit partially applied", extra={"event": "stage.partial_commit", "stage": stage,
                                                         "error": error})
            raise CommitError(f"commit partially applied ({reply[1]} of {reply[2]} commands failed): {error}",
                              partial=True)

    def _send(self, how: str, script: str, *, read: bool) -> Any:
        """MULTI, the script, EXEC and (`read`) the read, in one write: the script's reply (or its error). A
        connection error is raised as is (the commit may or may not have applied: never re-sent, core.guard)."""
        commands: list[tuple[Any, ...]] = [("MULTI",), (how, script, len(self.keys), *self.keys, *self.args),
                                           ("EXEC",)]
        if read and self.read is not None:
            group, consumer, count = self.read
            commands.append(("XREADGROUP", "GROUP", group, consumer, "COUNT", count, "STREAMS", self.keys[0], ">"))
        replies = Wire(self.client).send_packed(packed(commands), len(commands), commands).replies()
        if len(replies) > 3:  # read after EXEC whatever the commit did: the entries are ours either way
            if isinstance(replies[3], ResponseError):
                self.read_error = replies[3]
            else:
                self.entries = replies[3]
        for reply in replies[:2]:
            if isinstance(reply, ResponseError):  # a queueing error: the transaction was discarded
                return reply
        executed = replies[2]
        if isinstance(executed, ResponseError) or not executed:
            return executed if isinstance(executed, ResponseError) else ResponseError("EXEC returned nothing")
        return executed[0]


class FastCommit:
    """Builds `_COMMIT` calls for one consumer (see the module docstring)."""

    def __init__(self, client: Redis, fixed_keys: Sequence[str], group: str, consumer: str) -> None:
        """`fixed_keys`: input stream, states, counts, derived, held, results, stats, arrivals (in that order)."""
        self.client, self.script = client, client.register_script(_COMMIT)
        client.script_load(_COMMIT)  # now, so that a commit's first EVALSHA runs (a NOSCRIPT costs a round trip)
        self.fixed = list(fixed_keys)
        self.group, self.consumer = group, consumer

    def prepare(self, *, acks: list[bytes], live: list[bytes], results: dict[str, bytes],
                stats: list[tuple[str, int]], outputs: list[tuple[str, bytes]], read_count: int) -> FastCommitCall:
        """`outputs`: (stream key, encoded item) to publish; `results`: a sink's item id -> result JSON."""
        keys = list(self.fixed)
        index: dict[str, int] = {}
        out_args: list[Any] = []
        for key, raw in outputs:
            i = index.get(key)
            if i is None:
                keys.append(key)
                i = index[key] = len(keys)  # Lua's KEYS are 1-based
            out_args += (i, raw)
        # Which keys this commit touches, hence must hold their type (as core.guard checks the MULTI's keys).
        spec = ["s" if acks or live else "-", "h" if results else "-", "h" if results else "-",
                "S" if results else "-", "h" if acks else "-", "h" if results else "-", "h" if stats else "-",
                "h" if outputs else "-"] + ["s"] * len(index)
        same = live is acks or live == acks
        values = list(results.values())
        all_empty = values.count(b"{}") == len(values)  # in C (the batch loop gives them all one b"{}" object)
        # The stale-commit check (core.rewind.pending_checks): when publishing to a stream this commit does not ack.
        stale = any(":s:" in key and key != self.fixed[0] for key in index) and bool(live)
        args: list[Any] = [self.group, self.consumer, 1 if stale else 0, 0, "".join(spec), len(acks),
                           -1 if same else len(live), len(results), 0 if all_empty else 1, len(stats), len(outputs)]
        args += acks
        if not same:
            args += live
        if all_empty:
            args += results.keys()
        else:
            for item_id, value in results.items():
                args += (item_id, value)
        for name, n in stats:
            args += (name, n)
        args += out_args
        read = (self.group, self.consumer, read_count) if read_count > 0 else None
        return FastCommitCall(self.client, self.script, keys, args, self.consumer, read)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_read(reply: Any) -> list[tuple[bytes, dict[bytes, bytes] | None]]:
    """A raw XREADGROUP reply (RESP2 arrays, or RESP3's map) as redis-py's (entry id, fields) pairs."""
    if not reply:
        return []
    entries = next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1]
    out: list[tuple[bytes, dict[bytes, bytes] | None]] = []
    for entry_id, flat in entries:
        if flat is None:
            out.append((entry_id, None))
        elif len(flat) == 2:
            out.append((entry_id, {flat[0]: flat[1]}))
        else:
            out.append((entry_id, dict(zip(flat[::2], flat[1::2], strict=True))))
    return out


def _plain_read(reply: Any) -> tuple[list[bytes], list[bytes]] | None:
    """The entry ids and `item` fields of a raw XREADGROUP reply (as `parse_read` takes it) whose every entry is
    exactly one field, `item` (what the stages and the dispatcher write), without a dict per entry; None when any
    entry is otherwise (deleted, addressed to a stage with `to`, foreign): then `parse_read` and the full path."""
    entries = next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1]
    ids: list[bytes] = []
    raws: list[bytes] = []
    for entry_id, flat in entries:
        if flat is None or len(flat) != 2 or flat[0] != FIELD:
            return None
        ids.append(entry_id)
        raws.append(flat[1])
    return ids, raws


def commit_completions(consumer: StreamConsumer, commit: Commit, read_next: int) -> None:
    """`StreamConsumer.commit` of completions only: one call of the script, and the read ahead of `read_next`
    new entries after it (0: none), left for the consumer's next read() even if the commit was refused."""
    acks = commit.acks
    live = [a for a in acks if a not in commit.gone] if commit.gone else acks
    stats = [("out", commit.completed)] if commit.completed else []
    call = consumer._fast.prepare(
        acks=acks, live=live, results=commit.sink_results, stats=stats + commit.stats,
        outputs=[(consumer.keys.stream(stream), item.encode()[FIELD]) for stream, item in commit.outputs],
        read_count=read_next)
    try:
        consumer._execute(call)
    finally:  # even if the commit was refused: the entries read ahead are ours, the next read() returns them
        consumer._left = _read_ahead(consumer, call)
    consumer.m_out.inc(commit.completed)
    consumer.maybe_trim()


def _read_ahead(consumer: StreamConsumer, call: FastCommitCall) -> list[Delivery]:
    from .batch_decode import _deliveries, deliveries

    if call.read_error is not None:  # the commit stands; the read after it failed (the group vanished)
        consumer._nogroup(call.read_error)
        return []
    if call.read is None:
        return []
    consumer._reclaimed_last = False
    plain = _plain_read(call.entries) if call.entries else ([], [])
    if plain is not None:  # every entry one `item` field, so none addressed to another stage (consumer._ours)
        batch = _deliveries(*plain, {}, 1)
    else:
        batch = deliveries(consumer._ours(parse_read(call.entries)), {})
    consumer.m_in.inc(len(batch))
    return batch
