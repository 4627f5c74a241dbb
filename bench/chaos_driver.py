"""The chaos harness's fault injector: find the role processes of a `batchmesh run`, SIGKILL a random one at random
moments of the batch, and count what the roles reclaimed (their /metrics, scraped while they live).

Moments: `kills` thresholds of the batch's progress p drawn uniformly from (0.02, 0.97), where
p = (items dispatched + items folded by the reduce) / (2 × items), read from Redis (the `arrivals` hash and the
reducer's stage stats); each kill waits a further 0-0.2 s at random. So kills land while the manager lists, while
the map runs and while the barriers fold, wherever the batch spends its time, whatever its speed.

Victims: a role class first, in rounds: each round is the six classes (worker, router, manager, reducer, joiner,
source) in a random order, so 20 kills hit every class three times or more (a class with no live process at that
moment is passed over), then one of its live processes at random. `max_per_role` (4) caps the kills of one
role name, so that they spread over the roles; the local supervisor restarts a role with a backoff and gives it up
only after GIVE_UP_AFTER crashes in a row without progress (services/runner/supervisor.py), which the cap keeps
the harness clear of."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from services.core import Keys
from services.core.spec import Pipeline

from .role_procs import role_processes

CLASSES = ("worker", "router", "manager", "reducer", "joiner", "source")
_RECLAIMED = re.compile(r'^batchmesh_items_reclaimed_total\{([^}]*)\} ([0-9.e+]+)$', re.M)


def role_class(pipeline: Pipeline, command: str, stage: str | None) -> str | None:
    """worker | router | manager | reducer | joiner | source, from a role's CLI command and --stage."""
    if command in ("source", "manager", "worker"):
        return command
    if command != "router" or stage not in pipeline.stages:
        return None
    kind = pipeline.stages[stage].kind
    return {"reduce": "reducer", "join": "joiner"}.get(kind, "router")


def progress(client: redis.Redis, pipeline: Pipeline, items: int, reducer: str) -> float:
    """(dispatched + folded) / (2 × items), 0..1."""
    keys = Keys(pipeline.name)
    dispatched = int(client.hget(keys.arrivals(), keys.stream("source")) or 0)
    folded = int(client.hget(keys.stage_stats(reducer), "out") or 0)
    return min((dispatched + folded) / (2 * items), 1.0)


@dataclass
class Kill:
    at_s: float  # seconds since the driver started
    role_class: str
    role: str  # e.g. worker/work-0, router/shards, manager
    pid: Any  # a process id, or a container id
    progress: float


@dataclass
class Driver:
    """Kills `kills` role processes, found by `find()` -> [(pid, role class, role name)], with `kill(pid)` (a pid
    may be a container id)."""

    find: Callable[[], list[tuple[Any, str, str]]]
    kill: Callable[[Any], bool]
    progress: Callable[[], float]
    kills: int
    seed: int = 1
    max_per_role: int = 4
    done: Callable[[], bool] = lambda: False
    log: list[Kill] = field(default_factory=list)

    def run(self, stop: threading.Event) -> None:
        rnd = random.Random(self.seed)
        thresholds = sorted(rnd.uniform(0.02, 0.97) for _ in range(self.kills))
        began = time.monotonic()
        per_role: Counter[str] = Counter()
        order: list[str] = []
        for threshold in thresholds:
            while not stop.is_set() and not self.done():
                try:
                    p = self.progress()
                except redis.RedisError:
                    p = 0.0
                if p >= threshold:
                    break
                stop.wait(0.05)
            if stop.wait(rnd.uniform(0, 0.2)) or self.done():
                return
            candidates = [c for c in self.find() if per_role[c[2]] < self.max_per_role]
            if not candidates:
                continue
            live = {c[1] for c in candidates}
            if not order:
                order = rnd.sample(CLASSES, len(CLASSES))
            chosen = next((cls for cls in order if cls in live), None) or rnd.choice(sorted(live))
            if chosen in order:
                order.remove(chosen)
            pid, cls, role = rnd.choice(sorted(c for c in candidates if c[1] == chosen))
            if self.kill(pid):
                per_role[role] += 1
                self.log.append(Kill(round(time.monotonic() - began, 2), cls, role, pid, round(p, 3)))

    def figures(self) -> dict[str, Any]:
        return {"kills": len(self.log),
                "kills_per_class": dict(sorted(Counter(k.role_class for k in self.log).items())),
                "kills_per_role": dict(sorted(Counter(k.role for k in self.log).items())),
                "kill_log": [k.__dict__ for k in self.log]}


# -- local runs: the role processes of one `batchmesh run` ------------------------------------------------------

def local_roles(run_pid: int, pipeline: Pipeline) -> list[tuple[int, str, str]]:
    """The role processes the run's supervisor started: children of `run_pid` running `services.cli <role>`."""
    found = []
    for pid, rest in role_processes(run_pid).items():
        command = rest[0] if rest else ""
        stage = rest[rest.index("--stage") + 1] if "--stage" in rest[:-1] else None
        cls = role_class(pipeline, command, stage)
        if cls is not None:
            found.append((pid, cls, f"{command}/{stage}" if stage else command))
    return found


def sigkill(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False


@dataclass
class Scraper:
    """Every role's batchmesh_items_reclaimed_total, read from the run's Prometheus file_sd targets file every
    `every_s`; a (re)started role has a fresh port, so the last value seen per port is that process's count. A
    process killed between two scrapes loses what it reclaimed since the last one: the sum is a lower bound."""

    targets_file: Path
    every_s: float = 0.5
    seen: dict[str, dict[str, float]] = field(default_factory=dict)  # target -> stage -> reclaimed

    def scrape_once(self) -> None:
        try:
            targets = json.loads(self.targets_file.read_text())
        except (OSError, ValueError):
            return
        for group in targets:
            for target in group.get("targets", []):
                try:
                    with urllib.request.urlopen(f"http://{target}/metrics", timeout=1) as reply:  # noqa: S310
                        text = reply.read().decode()
                except OSError:
                    continue
                for labels, value in _RECLAIMED.findall(text):
                    stage = dict(re.findall(r'(\w+)="([^"]*)"', labels)).get("stage", "")
                    self.seen.setdefault(target, {})[stage] = float(value)

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.every_s):
            self.scrape_once()

    def reclaimed(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for stages in self.seen.values():
            for stage, value in stages.items():
                total[stage] += int(value)
        return dict(sorted(total.items()))
