"""Poison and slow items at scale (issue 11, part 3): `python -m bench.poison [--items N] [--executor process]`.

A pipeline source -> work -> reduce (count and sum) over N items, where 1% of the items make the worker command
exit non-zero, 0.5% hang past the stage's timeout and 0.5% SIGKILL the worker process itself, every time until a
flag says the bug is fixed. Run 1 must dead-letter exactly those items, each after max_deliveries, with its
reason (exit code 3 / timed out / exit code -9), and fold every other item into the reduce exactly once. Then the
fix, `batchmesh dlq replay`, and run 2: the replayed items complete and the batch's aggregate is exact over all N
items (the barrier folds them as late items). Printed: items, crashes, hangs, kills, dead letters, duplicates,
lost, wall time per run. The checker reads the aggregate from Redis, not from the run's own report. With
`--executor inproc` the poison items run in an in-process worker and take its process down instead.

tests/e2e/test_run_poison_scale.py runs it with 400 items."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis
import yaml

ROOT = Path(__file__).resolve().parents[1]

# The worker: its item's name says what it does until $FIXED exists. Reads the name from WORK_ITEM_FILE (compact
# JSON), never passes it to another command. Logs each successful run for the duplicate count.
WORKER = r"""#!/bin/sh
name=$(sed -n 's/.*"name":"\([^"]*\)".*/\1/p' "$WORK_ITEM_FILE")
if [ ! -e "$FIXED" ]; then
  case "$name" in
    crash-*) echo "poison: crash" >&2; exit 3 ;;
    hang-*) exec sleep 3600 ;;
    kill-*) kill -KILL $$ ;;
  esac
fi
echo "$name" >> "$RUN_LOG"
echo "{\"n\": ${name##*-}}"
"""

# `--executor inproc`: the same as an in-process worker of the stream executor, where every poison item takes the
# worker process itself down (os._exit, the watchdog at the timeout, SIGKILL), so each is dead-lettered by the
# delivery cap of reclaimed entries after the supervisor restarted its worker max_deliveries times.
PLUGIN = r"""
import os, signal, time
from services.workers import worker

@worker("poisonous", writes=False)
def poisonous(item, output_dir):
    name = item["name"]
    if not os.path.exists(os.environ["FIXED"]):
        if name.startswith("crash-"):
            os._exit(3)
        if name.startswith("hang-"):
            time.sleep(3600)
        if name.startswith("kill-"):
            os.kill(os.getpid(), signal.SIGKILL)
    with open(os.environ["RUN_LOG"], "a") as f:
        f.write(name + "\n")
    return {"n": int(name.rsplit("-", 1)[1])}
"""

REASONS = {"crash": "exit code 3", "hang": "timed out", "kill": "exit code -9"}
INPROC_REASON = "without acknowledgement"  # the consumer died: the delivery cap of reclaimed entries


@dataclass
class Figures:
    items: int
    crashes: int
    hangs: int
    kills: int
    dead_letters: int
    dead_with_reason: int
    duplicates: int
    lost: int
    aggregate_exact_run1: bool
    aggregate_exact_after_replay: bool
    run1_s: float
    replay_run_s: float


def names(items: int) -> list[str]:
    """1% crash, 0.5% hang, 0.5% kill (at least one of each), spread over the range; the rest ok."""
    out = []
    for i in range(items):
        kind = ("crash" if i % 100 == 7 else "hang" if i % 200 == 13 else "kill" if i % 200 == 113 else "ok")
        out.append(f"{kind}-{i}")
    return out


def _spec(tmp: Path, executor: str, concurrency: int) -> Path:
    work: dict[str, object] = {"input": "source", "command": ["sh", str(tmp / "worker.sh")], "executor": executor,
                               "concurrency": concurrency, "timeout": "1s"}
    if executor == "inproc":
        (tmp / "plugin.py").write_text(PLUGIN)
        work = {"input": "source", "worker": "poisonous", "timeout": "1s", "concurrency": concurrency}
    spec = {"apiVersion": "batchmesh/v1", "kind": "Pipeline", "name": "poisonscale",
            "plugins": [str(tmp / "plugin.py")] if executor == "inproc" else [],
            "source": {"type": "directory", "path": str(tmp / "in")},
            "defaults": {"max_deliveries": 3, "visibility_timeout": "2s",
                         "retry": {"backoff": "50ms", "max_backoff": "200ms"}},
            "stages": {"work": {"work": work},
                       "total": {"reduce": {"input": "work", "fold": {"items": {"count": True},
                                                                      "n": {"sum": "data.n"}}}}}}
    path = tmp / "p.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _cli(env: dict[str, str], *args: str, timeout: float = 600) -> tuple[int, float, str]:
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "services.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    return done.returncode, time.monotonic() - began, done.stderr


def run(redis_url: str, tmp: Path, items: int = 400, executor: str = "process", concurrency: int = 8) -> Figures:
    """The whole scenario against `redis_url` (a Redis of its own: the pipeline's keys are wiped first)."""
    from services.core import Keys, list_dead_letters
    from services.core.barriers import aggregate

    client = redis.Redis.from_url(redis_url)
    keys = Keys("poisonscale")
    for key in client.scan_iter(match=f"{keys.prefix}*", count=1000):
        client.delete(key)
    all_names = names(items)
    (tmp / "in").mkdir(parents=True, exist_ok=True)
    for name in all_names:
        (tmp / "in" / name).write_text(name)
    (tmp / "worker.sh").write_text(WORKER)
    path = _spec(tmp, executor, concurrency)
    log = tmp / "ran.log"
    env = {**os.environ, "REDIS_URL": redis_url, "BATCHMESH_DATA_DIR": str(tmp / "st"), "RUN_LOG": str(log),
           "FIXED": str(tmp / "fixed"), "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    run_args = ["run", str(path), "--out", str(tmp / "out"), "--quiet", "--timeout", "600"]
    code1, run1_s, err1 = _cli(env, *run_args)
    if code1 != 1:
        raise RuntimeError(f"run 1 should exit 1 (dead letters), got {code1}:\n{err1[-3000:]}")
    bad = {n for n in all_names if not n.startswith("ok-")}
    dead = list_dead_letters(client, keys, "work", count=100_000)
    batch = client.zrange(keys.batches(), 0, 0)[0].decode()
    ops = {"items": "count", "n": "sum"}
    good = [n for n in all_names if n.startswith("ok-")]
    expect1 = {"items": len(good), "n": sum(int(n.split("-")[1]) for n in good)}
    exact1 = aggregate(client, keys, "total", batch, ops) == expect1
    def reason_ok(d: Any) -> bool:
        if executor == "inproc":
            return d.deliveries > 3 and INPROC_REASON in d.reason
        return d.deliveries == 3 and REASONS[(d.item_id or "").split("-")[0]] in d.reason

    with_reason = sum(1 for d in dead if d.item_id in bad and reason_ok(d))
    dead_ids = {d.item_id for d in dead}
    (tmp / "fixed").write_text("")
    code, _, err = _cli(env, "dlq", "replay", str(path))
    if code != 0:
        raise RuntimeError(f"dlq replay failed ({code}):\n{err[-2000:]}")
    code2, run2_s, err2 = _cli(env, *run_args)
    if code2 != 0:
        raise RuntimeError(f"run 2 should exit 0, got {code2}:\n{err2[-3000:]}")
    ran = log.read_text().split()
    expect2 = {"items": items, "n": sum(range(items))}
    deadline = time.monotonic() + 10  # run 2 ends when its own batch is done; late folds into run 1's are prompt
    while (got := aggregate(client, keys, "total", batch, ops)) != expect2 and time.monotonic() < deadline:
        time.sleep(0.1)
    return Figures(
        items=items, crashes=sum(n.startswith("crash-") for n in all_names),
        hangs=sum(n.startswith("hang-") for n in all_names), kills=sum(n.startswith("kill-") for n in all_names),
        dead_letters=len(dead), dead_with_reason=with_reason if dead_ids == bad else 0,
        duplicates=len(ran) - len(set(ran)), lost=len(set(all_names) - set(ran)),
        aggregate_exact_run1=exact1, aggregate_exact_after_replay=got == expect2,
        run1_s=round(run1_s, 2), replay_run_s=round(run2_s, 2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--executor", default="process", choices=["process", "stream", "inproc"])
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    from services.core import EmbeddedRedis

    with tempfile.TemporaryDirectory(prefix="bm-poison-") as tmp:
        server = EmbeddedRedis(Path(tmp) / "redis", persist=False)
        url = server.start()
        try:
            figures = run(url, Path(tmp) / "run", args.items, args.executor, args.concurrency)
        finally:
            server.stop()
    print(json.dumps({"executor": args.executor, **asdict(figures)}, indent=1))
    ok = (figures.dead_letters == figures.dead_with_reason == figures.crashes + figures.hangs + figures.kills
          and figures.duplicates == 0 and figures.lost == 0 and figures.aggregate_exact_run1
          and figures.aggregate_exact_after_replay)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

