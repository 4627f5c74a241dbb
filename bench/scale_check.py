"""What bench.scale (and tests/integration/test_scale_memory.py) measure and check: memory sampled through a run,
the bound it is held to, and the exactly-once check at the end.

The memory bound. Redis holds, besides its own base, (1) per-item bookkeeping that lives as long as the pipeline
(the manager's versions, every item's state, the batch's item set, the sink's results: O(items), by design, so a
re-run dispatches nothing) and (2) stream entries. Trimming (core.trim, DESIGN.md: MINID below every group's
floor) removes each entry once every group has acknowledged it, so (2) is bounded by the entries in flight (an
item in flight holds one unacknowledged entry: the one its current stage reads) plus the acknowledged entries not
trimmed yet (each consumer trims at most once a second: `SLACK_S` seconds of throughput per stream). So at every
sample t:

    used_memory(t) <= base + bookkeeping_end + entry_bytes * (in_flight(t) + slack) + CLIENTS

with bookkeeping_end = used_memory at the end minus base minus what the streams still hold then (the bookkeeping
only grows, so its final size bounds every earlier one), entry_bytes measured on 10,000 entries of the run's
largest shape, in_flight(t) = dispatched - done - dead at t, slack = streams * max(SLACK_MIN, SLACK_S * peak
items/s), CLIENTS a fixed allowance for client buffers. Without trimming every stream keeps all N entries and the
bound fails as soon as N * streams entries outgrow in-flight work (checked by the test with trimming disabled)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from services.core import DEAD, DONE, Keys, WorkItem

SLACK_S = 3.0  # seconds of throughput per stream acknowledged but not yet trimmed (trim every 1 s + sampling lag)
SLACK_MIN = 2000  # entries per stream: a read batch or two, whatever the rate
CLIENTS = 8 * 1024 * 1024  # client query/output buffers (a dispatch script call carries ~1000 items)
SAMPLE_ENTRIES = 10_000


def entry_bytes(client: redis.Redis, keys: Keys, batch: str = "00000000-0000") -> float:
    """Bytes of used_memory per stream entry shaped like the run's (a dispatched item, the largest shape), measured
    on SAMPLE_ENTRIES entries in a scratch stream that is deleted afterwards."""
    scratch = f"{keys.prefix}:scratch-entry-size"
    before = int(client.info("memory")["used_memory"])
    pipe = client.pipeline(transaction=False)
    for i in range(SAMPLE_ENTRIES):
        name = f"item-{i:08d}"
        raw = WorkItem(id=name, data={"name": name, "version": "1", "result": {}}, version="1",
                       batch=batch).encode()
        pipe.xadd(scratch, {**raw, b"to": b"s1"})
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()
    per = (int(client.info("memory")["used_memory"]) - before) / SAMPLE_ENTRIES
    client.delete(scratch)
    return max(per, 1.0)


def _proc_kb(pid: int, field_name: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Sample:
    t: float
    used_memory: int
    in_flight: int
    stream_entries: int
    done: int


@dataclass
class Sampler:
    client: redis.Redis
    keys: Keys
    streams: list[str]
    manager_pid: int | None
    base: int
    per_entry: float
    samples: list[Sample] = field(default_factory=list)
    manager_hwm_kb: int = 0
    progress: Path | None = None  # a JSON line of the latest sample is appended here every ~10 s
    _noted: float = 0.0

    def sample(self) -> Sample:
        pipe = self.client.pipeline(transaction=False)
        pipe.info("memory")
        pipe.hmget(self.keys.counts(), [DONE, DEAD])
        pipe.hget(self.keys.arrivals(), self.streams[0])
        for stream in self.streams:
            pipe.xlen(stream)
        memory, (done, dead), dispatched, *lengths = pipe.execute()
        done, dead = int(done or 0), int(dead or 0)
        s = Sample(time.monotonic(), int(memory["used_memory"]), max(0, int(dispatched or 0) - done - dead),
                   sum(int(n) for n in lengths), done)
        self.samples.append(s)
        if self.manager_pid is not None:
            self.manager_hwm_kb = max(self.manager_hwm_kb, _proc_kb(self.manager_pid, "VmHWM"))
        if self.progress is not None and s.t - self._noted >= 10:
            self._noted = s.t
            elapsed = s.t - self.samples[0].t
            with self.progress.open("a") as f:
                f.write(json.dumps({"elapsed_s": round(elapsed, 1), "done": s.done, "in_flight": s.in_flight,
                                    "stream_entries": s.stream_entries, "used_memory": s.used_memory,
                                    "peak_used_memory": max(x.used_memory for x in self.samples),
                                    "manager_hwm_mb": self.manager_hwm_kb / 1024,
                                    "items_per_s": s.done / elapsed if elapsed else 0.0,
                                    "load_average_1m": os.getloadavg()[0]}) + "\n")
        return s

    def run_until_done(self, n: int, every_s: float, timeout: float,
                       alive: Callable[[], bool] = lambda: True) -> None:
        deadline = time.monotonic() + timeout
        while True:
            s = self.sample()
            if s.done >= n:
                return
            if not alive():
                raise RuntimeError(f"a role died after {s.done:,} of {n:,} items")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{s.done:,} of {n:,} items done after {timeout:.0f} s")
            time.sleep(every_s)

    def peak_rate(self, window_s: float = 2.0) -> float:
        """The highest items/s (done) over any window of about `window_s` seconds between samples."""
        best, j = 0.0, 0
        for i, s in enumerate(self.samples):
            while j < i and s.t - self.samples[j].t > window_s:
                j += 1
            first = self.samples[max(0, j - 1)]
            if s.t > first.t:
                best = max(best, (s.done - first.done) / (s.t - first.t))
        return best


def memory_bound(client: redis.Redis, keys: Keys, base: int, per_entry: float, sampler: Sampler,
                 n: int, *, clients: int = CLIENTS, slack_s: float = SLACK_S) -> dict[str, Any]:
    """Judge every sample against the bound of the module docstring (call at the end, all items done); `clients`
    and `slack_s` replace the CLIENTS and SLACK_S allowances."""
    end = int(client.info("memory")["used_memory"])
    in_streams = sum(int(client.memory_usage(s, samples=0) or 0) for s in sampler.streams)
    bookkeeping = max(0, end - base - in_streams)
    slack = len(sampler.streams) * max(SLACK_MIN, slack_s * sampler.peak_rate())
    ratios, peak_bound = [], 0.0
    for s in sampler.samples:
        bound = base + bookkeeping + per_entry * (s.in_flight + slack) + clients
        peak_bound = max(peak_bound, bound)
        ratios.append(s.used_memory / bound)
    return {"peak_used_memory": max(s.used_memory for s in sampler.samples), "peak_bound": peak_bound,
            "within_bound": max(ratios) <= 1.0, "worst_ratio": max(ratios), "base_used_memory": base,
            "end_used_memory": end, "bookkeeping": bookkeeping, "bookkeeping_per_item": bookkeeping / n,
            "entry_bytes": per_entry, "slack_entries": slack,
            "peak_in_flight": max(s.in_flight for s in sampler.samples),
            "peak_stream_entries": max(s.stream_entries for s in sampler.samples)}


def verify(client: redis.Redis, keys: Keys, n: int, streams: list[str], names: Callable[[int], str] | None = None
           ) -> dict[str, Any]:
    """lost and duplicates as bench.scale's docstring defines them. `names(i)` gives the i-th item's name (default
    the JSONL file's `item-%08d`): every one must be `done`."""
    name_of = names or (lambda i: f"item-{i:08d}")
    not_done = 0
    for first in range(0, n, 10_000):
        ids = [name_of(i) for i in range(first, min(n, first + 10_000))]
        not_done += sum(1 for state in client.hmget(keys.states(), ids) if state != DONE.encode())
    counts = {k.decode(): int(v) for k, v in client.hgetall(keys.counts()).items()}
    arrivals = {s.rsplit(":", 1)[-1]: int(client.hget(keys.arrivals(), s) or 0) for s in streams}
    results = int(client.hlen(keys.results()))
    duplicates = sum(max(0, a - n) for a in arrivals.values()) + max(0, results - n)
    return {"lost": not_done, "duplicates": duplicates, "counts": counts, "arrivals": arrivals,
            "results": results}
