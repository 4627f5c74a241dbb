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

# The state rule, as a Lua function other scripts include (core.fast_commit): move ids[first..] to `new`, unless
# done/dead with `keep_terminal` (a late duplicate cannot undo them) or an id never dispatched that is a derived
# one; a repeated id counts as changed by this call. The counts change once per state for the whole call (not
# once per id) and the states are written 500 fields to a call. `call` is redis.call or a caller's wrapper that
# counts failures. Returns how many ids changed state. The old states are read 500 to an HMGET (one call, not one
# HGET per id): what it reads is what HGET would, as this call writes only ids it has seen (`seen` answers those).
MARK_STATE_LUA = """
local function mark_state(call, states, counts, derived, new, keep_terminal, ids, first)
  local changed, left, fields, seen = 0, {}, {}, {}
  local olds, base = {}, first
  local function flush()
    if #fields > 0 then call('HSET', states, unpack(fields)); fields = {} end
  end
  for i = first, #ids do
    local id = ids[i]
    if i - base >= #olds then
      base = i
      olds = redis.call('HMGET', states, unpack(ids, i, math.min(i + 499, #ids)))
    end
    local old = seen[id] or olds[i - base + 1]
    local terminal = old == 'done' or old == 'dead'
    if old ~= new and not (terminal and keep_terminal) and (old or redis.call('SISMEMBER', derived, id) == 0) then
      seen[id] = new
      fields[#fields + 1] = id
      fields[#fields + 1] = new
      if #fields >= 1000 then flush() end
      if old then left[old] = (left[old] or 0) + 1 end
      changed = changed + 1
    end
  end
  flush()
  for state, n in pairs(left) do call('HINCRBY', counts, state, -n) end
  if changed > 0 then call('HINCRBY', counts, new, changed) end
  return changed
end
"""

# KEYS: states, counts, derived ids. ARGV: new state, "force" | "keep-terminal", ids... Returns how many changed.
# The script is atomic: nobody sees the steps between.
_SET_STATE = MARK_STATE_LUA + """
return mark_state(redis.call, KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2] == 'keep-terminal', ARGV, 3)
"""


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
