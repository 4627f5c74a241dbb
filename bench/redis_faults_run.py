"""One `batchmesh run` of bench.redis_faults' pipeline (source -> 2 in-process workers that log every run outside
Redis -> a reduce that counts and sums) over N files, and its checks: every item done once, the reduce exact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import redis

from .redis_servers import NAME, EmbeddedServer, RedisProcess
from .role_procs import role_processes

ROOT = Path(__file__).resolve().parents[1]

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
        embedded = isinstance(server, EmbeddedServer)  # no REDIS_URL: the run starts the embedded server
        self.env = {**{k: v for k, v in os.environ.items() if not (embedded and k == "REDIS_URL")},
                    **({} if embedded else {"REDIS_URL": server.url}), "BATCHMESH_DATA_DIR": str(tmp / "st"),
                    "BATCHMESH_REDIS_APPENDFSYNC": server.policy,
                    "FAULTS_RUNLOG": str(self.runlog), "FAULTS_SLEEP": str(sleep_s), **(env or {})}
        self.process: subprocess.Popen[str] | None = None
        self._client: redis.Redis | None = None
        self.seen_pids: set[int] = set()  # every role process seen during the run: more than the roles = restarts
        self._stop = threading.Event()
        from services.core.keys import Keys

        self.keys = Keys(NAME)

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            self._client = redis.Redis.from_url(self.server.url, socket_connect_timeout=0.5, socket_timeout=2)
        return self._client

    def start(self) -> None:
        self.log = open(self.tmp / "run.log", "w")  # noqa: SIM115 - the child keeps it
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "run", str(self.tmp / "pipeline.yaml"), "--input",
             str(self.tmp / "in"), "--out", str(self.tmp / "out"), "--quiet", "--timeout", "300"],
            cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._sample_pids, daemon=True).start()

    def done(self) -> set[str]:
        return {k.decode() for k, v in self.client.hgetall(self.keys.states()).items() if v == b"done"}

    def done_count(self) -> int:
        return int(self.client.hget(self.keys.counts(), "done") or 0)

    def runs(self) -> list[tuple[str, float]]:
        rows = [line.split("\t") for line in self.runlog.read_text().splitlines() if "\t" in line]
        return [(r[0], float(r[1])) for r in rows]

    def role_pids(self) -> dict[int, str]:
        """pid -> argv of the run's role processes (`batchmesh <role> ...` children of the runner)."""
        assert self.process is not None
        return {pid: " ".join(rest) for pid, rest in role_processes(self.process.pid).items()}

    def _sample_pids(self) -> None:
        while not self._stop.wait(0.2):
            try:
                self.seen_pids |= set(self.role_pids())
            except AssertionError:
                return

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
        self._stop.set()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
