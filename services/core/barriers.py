"""What a barrier (join, reduce) keeps in Redis per batch, read back: its progress and a reduce's aggregate.

A reduce's aggregate is one hash: field `name` holds a number (count, sum of numbers), field `name\\x1fkey` one
entry of an object (sum per key, histogram). Every role reads it through here: the reducer that emits it, the
manager's status, tests and benchmarks."""

from __future__ import annotations

from typing import Any

from redis import Redis

from .keys import Keys

SEP = "\x1f"  # between an aggregate's name and a key of its object: never in a name (the spec refuses it)


def barrier_state(client: Redis, keys: Keys, stage: str, batch: str) -> dict[str, Any]:
    """{"arrived": items folded/held, "fired": bool, "emitted": bool, "late": items after the barrier}."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.barrier(stage, batch, "state"))
    pipe.scard(keys.barrier(stage, batch, "in"))
    raw, arrived = pipe.execute()
    state = {k.decode(): v.decode() for k, v in raw.items()}
    return {"arrived": int(arrived), "fired": "fired" in state, "emitted": "emitted" in state,
            "late": int(state.get("late", 0)), "expected": int(state["expected"]) if "expected" in state else None}


def number(text: bytes | str) -> int | float:
    """Redis writes integers without a point (also HINCRBYFLOAT's integral results): those stay exact ints."""
    try:
        return int(text)
    except ValueError:
        value = float(text)
        return int(value) if value.is_integer() else value


def aggregate(client: Redis, keys: Keys, stage: str, batch: str, names: dict[str, str]) -> dict[str, Any]:
    """The aggregate so far. `names` maps each aggregate to its operator (count, sum, histogram): an aggregate
    nothing was folded into yet is 0 (count, sum) or {} (histogram, sum of objects)."""
    out: dict[str, Any] = {name: {} if op == "histogram" else 0 for name, op in names.items()}
    for field, value in client.hgetall(keys.barrier(stage, batch, "agg")).items():  # one round trip: the latency
        name, sep, key = field.decode().partition(SEP)
        if not sep:
            out[name] = number(value)
        else:
            if not isinstance(out.get(name), dict):
                out[name] = {}
            out[name][key] = number(value)
    return {name: dict(sorted(v.items())) if isinstance(v, dict) else v for name, v in out.items()}


def top(values: dict[str, int | float], k: int) -> list[list[Any]]:
    """The k largest entries, largest first; ties by key, so the order is the same every time."""
    return [[key, v] for key, v in sorted(values.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]
