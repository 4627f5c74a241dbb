"""(c) The manager's diff of a 1,000,000-item listing: time and peak memory, in a subprocess of its own.

The child generates the listing page by page (1000 items a page, the fields the directory source produces) and
hands each page to the manager's real `Dispatcher`, as `Manager.poll` does with each page it lists:
- pass 1, every item new: all are dispatched (checked: the source stream holds n entries afterwards);
- passes 2.., every item known (the steady state of a manager re-polling an unchanged source): none is.
Only the time inside `Dispatcher.dispatch` counts (wall, and for the first pass also the CPU seconds of this
process and of redis-server: on a loaded machine those are the stable figures); making the listing's dicts (the
lister's job: HTTP + JSON in production) is timed apart. Peak RSS is the child's own high-water mark, VmHWM
(interpreter and imports included).

    python -m bench.diff_million --url redis://... --n 1000000 [--passes 3]   # prints one JSON line"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _redis_cpu_s(client: Any) -> float:
    """The redis-server's own CPU seconds so far (user + system, INFO cpu)."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _command_usec(client: Any) -> dict[str, int]:
    """Redis' own time per command so far (INFO commandstats, microseconds; a script's inner calls are counted
    under their own names as well as inside the eval)."""
    return {name.removeprefix("cmdstat_"): int(stat["usec"]) for name, stat in client.info("commandstats").items()}


def _pass(dispatcher: Any, n: int, cpu: dict[str, float] | None = None) -> tuple[float, float, int]:
    """One listing pass: (seconds inside dispatch, seconds making pages, items dispatched). With `cpu`, the CPU
    seconds inside dispatch of this process ("python") and of the redis-server ("redis") are added to it: on a
    shared, loaded machine those say what the pass costs when wall time mostly says how busy the others were."""
    from .common import listing_item

    diff = listing = python = 0.0
    new = 0
    redis0 = _redis_cpu_s(dispatcher.client) if cpu is not None else 0.0
    usec0 = _command_usec(dispatcher.client) if cpu is not None else {}
    for first in range(0, n, 1000):
        t0 = time.perf_counter()
        page = [listing_item(i) for i in range(first, min(first + 1000, n))]
        t1, c1 = time.perf_counter(), time.process_time()
        stats = dispatcher.dispatch(page)
        diff += time.perf_counter() - t1
        python += time.process_time() - c1
        listing += t1 - t0
        new += stats.new
    if cpu is not None:
        cpu["python"] = cpu.get("python", 0.0) + python
        cpu["redis"] = cpu.get("redis", 0.0) + _redis_cpu_s(dispatcher.client) - redis0
        for name, usec in _command_usec(dispatcher.client).items():  # where Redis' time went, per listed item
            if usec > usec0.get(name, 0) and name != "info":
                cpu[f"usec_per_item.{name}"] = round((usec - usec0.get(name, 0)) / max(n, 1), 3)
    return diff, listing, new



def _peak_rss_kb() -> int:
    """This process's peak RSS in KiB since its exec: VmHWM. (ru_maxrss survives exec on Linux, so a child of a
    big parent, such as a long pytest run, would report the parent's size.)"""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux

def run_child(url: str, n: int, passes: int) -> dict[str, Any]:
    import redis

    from services.core import Keys, Progress
    from services.manager.diff import Dispatcher

    from .common import drop_pipeline, pipeline_name

    client = redis.Redis.from_url(url)
    name = pipeline_name("bdiff")
    keys = Keys(name)
    dispatcher = Dispatcher(client, keys, Progress(client, keys), batch="bench")
    try:
        load = os.getloadavg()[0]
        first_cpu: dict[str, float] = {}
        first_s, first_listing_s, dispatched = _pass(dispatcher, n, first_cpu)
        reran = dispatcher.reran  # a lost connection re-ran calls that had run: their items counted as known
        if reran:  # every item still went out once; count them as the manager does at a batch's close
            dispatched = int(client.scard(keys.batch_items(dispatcher.batch)))
        stream_len = int(client.xlen(keys.stream("source")))
        steady = [_pass(dispatcher, n) for _ in range(passes)]
        maxrss_kb = _peak_rss_kb()
    finally:
        drop_pipeline(client, name)
        client.close()
    return {
        "n": n,
        "first_pass_s": first_s,
        "first_pass_dispatched": dispatched,
        "first_pass_reran": reran,  # the dispatch connection was lost (e.g. a stall past the 5 s socket timeout)
        "first_pass_python_cpu_s": first_cpu["python"],  # CPU of the dispatching process inside dispatch
        "first_pass_redis_cpu_s": first_cpu["redis"],  # CPU of the redis-server meanwhile (INFO cpu)
        "first_pass_redis_usec_per_item": {k.split(".", 1)[1]: v for k, v in first_cpu.items() if "." in k},
        "load_average_1m": load,
        "stream_len": stream_len,
        "steady_pass_s": statistics.median(s for s, _, _ in steady),
        "steady_passes_s": [s for s, _, _ in steady],
        "steady_dispatched": max(new for _, _, new in steady),
        "listing_s_per_pass": statistics.median([first_listing_s, *(ls for _, ls, _ in steady)]),
        "peak_rss_mb": maxrss_kb / 1024,
    }


def measure_diff(url: str, n: int, passes: int = 3, timeout: float = 1800) -> dict[str, Any]:
    """Run the diff benchmark in a fresh interpreter (its RSS is its own) and return its figures."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    argv = [sys.executable, "-m", "bench.diff_million", "--url", url, "--n", str(n), "--passes", str(passes)]
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"diff benchmark failed ({proc.returncode}): {proc.stderr[-3000:]}")
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    if out["stream_len"] != n or out["first_pass_dispatched"] != n or out["steady_dispatched"] != 0:
        raise AssertionError(f"diff benchmark is wrong: {out}")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.diff_million", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--passes", type=int, default=3, help="steady-state passes (the median is reported)")
    args = parser.parse_args(argv)
    print(json.dumps(run_child(args.url, args.n, args.passes)), flush=True)


if __name__ == "__main__":
    main()
