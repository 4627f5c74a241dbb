"""Per-item progress: each item id has one state; a counts hash says how many items are in each state.

Both change together in one server-side script, so the counts are exact whatever crashes in between, and the
script can run inside a stage's commit transaction. What a barrier derives from a whole batch (a join's event, a
reduce's aggregate) flows through stages too but is not one of the batch's items: its id is in the `derived` set
and marking it changes nothing."""

from __future__ import annotations

from redis import Redis
from redis.client import Pipeline

from .guard import register_script_keys
from .keys import Keys

QUEUED, RUNNING, DONE, FAILED, DEAD = "queued", "running", "done", "failed", "dead"
STATES = (QUEUED, RUNNING, DONE, FAILED, DEAD)
TERMINAL = (DONE, DEAD)

# KEYS: states, counts, derived ids. ARGV: new state, "force" | "keep-terminal", ids...
# Returns how many ids changed state. The counts change once per state for the whole call (not once per id) and
# the states are written HSET_CHUNK fields to a call: the script is atomic, so nobody sees the steps between.
_SET_STATE = """
local new, mode, changed, left, fields, seen = ARGV[1], ARGV[2], 0, {}, {}, {}
local function flush()
  if #fields > 0 then redis.call('HSET', KEYS[1], unpack(fields)); fields = {} end
end
for i = 3, #ARGV do
  local old = seen[ARGV[i]] or redis.call('HGET', KEYS[1], ARGV[i])  -- a repeated id: as changed by this call
  local terminal = old == 'done' or old == 'dead'
  if old ~= new and not (terminal and mode == 'keep-terminal')
      and (old or redis.call('SISMEMBER', KEYS[3], ARGV[i]) == 0) then
    seen[ARGV[i]] = new
    fields[#fields + 1] = ARGV[i]
    fields[#fields + 1] = new
    if #fields >= 2 * HSET_CHUNK then flush() end
    if old then left[old] = (left[old] or 0) + 1 end
    changed = changed + 1
  end
end
flush()
for state, n in pairs(left) do redis.call('HINCRBY', KEYS[2], state, -n) end
if changed > 0 then redis.call('HINCRBY', KEYS[2], new, changed) end
return changed
""".replace("HSET_CHUNK", "500")


class Progress:
    def __init__(self, client: Redis, keys: Keys) -> None:
        self.keys = keys
        self._set_state = client.register_script(_SET_STATE)
        register_script_keys(self._set_state.sha, "hash", "hash", "set")  # checked before a commit's EXEC
        self.client = client

    def mark(self, ids: list[str], state: str, *, pipe: Pipeline | None = None, force: bool = False) -> None:
        """Move `ids` to `state`. Without `force`, done/dead items stay so (a late duplicate cannot undo them)."""
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}")
        if ids:
            keys = [self.keys.states(), self.keys.counts(), self.keys.derived()]
            args = [state, "force" if force else "keep-terminal", *ids]
            if pipe is None:
                self._set_state(keys=keys, args=args)
            else:  # EVAL, not the Script's EVALSHA: redis-py would send SCRIPT EXISTS first (one more round trip
                # per pipeline), and a script missing at EXEC time (NOSCRIPT) would fail alone inside a MULTI
                pipe.eval(_SET_STATE, len(keys), *keys, *args)

    def command(self, ids: list[str], state: str, *, force: bool = False) -> tuple[object, ...]:
        """`mark` as one command to send on a connection of one's own (core.held.send_hold): EVAL, not EVALSHA,
        so that it can never meet a NOSCRIPT."""
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}")
        keys = [self.keys.states(), self.keys.counts(), self.keys.derived()]
        return ("EVAL", _SET_STATE, len(keys), *keys, state, "force" if force else "keep-terminal", *ids)

    def counts(self) -> dict[str, int]:
        raw = self.client.hgetall(self.keys.counts())
        counts = {state: 0 for state in STATES}
        counts.update({k.decode(): int(v) for k, v in raw.items()})
        return counts

    def state_of(self, item_id: str) -> str | None:
        value = self.client.hget(self.keys.states(), item_id)
        return value.decode() if value is not None else None
