"""(e) The image pipeline on 2 cores vs a sequential script of the same algorithms (target >= 1.7x).

    python -m bench.images [--n 60] [--repeat 3] [--out out/bench.json]

This process and everything it starts are pinned to 2 CPUs. Both sides warm first, as a deployed service and a
long-running script would be: the pipeline (`batchmesh run examples/images/pipeline.yaml --watch`, every role its
own process) processes a warm-up batch, then N new images are moved into its input directory and timed until the
batch is done (report written, originals deleted); the sequential script (`imaging.sequential.run`, in this
process, OpenCV single-threaded like the workers) runs the warm-up images, then is timed on the same N images.
Same images, same worker functions, same outputs. Repetitions interleave (pipeline, sequential, ...) so drift hits
both alike. Also reported: CPU seconds per image on each side (the pipeline's whole process tree, from /proc), the
overhead the mesh adds to the work itself. Other load on the machine skews both: a warning says when there is."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import yaml

from services.core import DONE, Keys
from services.core.embedded import redis_url
from services.core.spec import Pipeline
from services.manager import batch_done

from .common import median
from .report import Row, merge_save, table

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "images"
WARM = 16  # enough that each of the 8 heavy worker processes gets some: one with none would load its
# cascades and enrol the face gallery (~1-2 s CPU) inside the timed batch
CORES = 2
TARGET = 1.7
LABEL = "(e) image pipeline"
PICKUP: list[float] = []  # per pipeline run: seconds from the files' arrival to the manager's first dispatch


def generate(target: Path, count: int, seed: int) -> None:
    subprocess.run([sys.executable, str(EXAMPLE / "generate.py"), str(target), "--count", str(count),
                    "--seed", str(seed)], check=True, capture_output=True)


def tree_cpu(root: int) -> dict[str, float]:
    """CPU seconds (user + system) used so far by `root` and every live descendant (Linux /proc), summed per role:
    `worker blur-0` (its replicas together), `router fanout`, `manager`, `redis-server`, ..."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(proc.name))
        cpu[int(proc.name)] = (int(fields[11]) + int(fields[12])) / tick
    roles: dict[str, float] = {}
    stack = [root]
    while stack:
        pid = stack.pop()
        label = "run" if pid == root else _role(pid)
        roles[label] = roles.get(label, 0.0) + cpu.get(pid, 0.0)
        stack += children.get(pid, [])
    return roles


def _role(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return "gone"
    if "services.cli" in argv and len(argv) > argv.index("services.cli") + 1:
        role = argv[argv.index("services.cli") + 1]
        return f"{role} {argv[argv.index('--stage') + 1]}" if "--stage" in argv[:-1] else role
    named = next((a for a in argv if a.startswith("services.") or "redis" in a), argv[0])
    return Path(named.split(" ")[0]).name  # redis-server retitles itself "redis-server HOST:PORT"


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after}


def sequential(warm: Path, images: Path, tmp: Path) -> tuple[float, dict[str, float]]:
    if str(EXAMPLE) not in sys.path:
        sys.path.insert(0, str(EXAMPLE))
    from imaging.sequential import run  # the example's own package, as sequential.py imports it

    run(warm, tmp / "seq-warm")
    began, cpu = time.perf_counter(), time.process_time()
    run(images, tmp / "seq")
    return time.perf_counter() - began, {"sequential": time.process_time() - cpu}


def pipeline(warm: Path, images: Path, tmp: Path, idle_s: float = 0.0) -> tuple[float, dict[str, float]]:
    """Seconds for the timed batch and the CPU seconds each role of the pipeline used meanwhile. With `idle_s`:
    instead, after the warm-up, the CPU seconds each role used over `idle_s` seconds of nothing to do."""
    spec = yaml.safe_load((EXAMPLE / "pipeline.yaml").read_text())
    spec["source"]["poll"] = "200ms"
    spec_path = tmp / "pipeline.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    model = Pipeline.model_validate(spec)
    inbox = tmp / "inbox"
    shutil.copytree(warm, inbox)
    env = {**os.environ, "BATCHMESH_DATA_DIR": str(tmp / "st"), "BATCHMESH_LOG_LEVEL": "WARNING"}
    env.pop("REDIS_URL", None)
    run = subprocess.Popen([sys.executable, "-m", "services.cli", "run", str(spec_path), "--input", str(inbox),
                            "--out", str(tmp / "out"), "--quiet", "--watch"], cwd=ROOT, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        marker = tmp / "st" / "redis" / "redis.url"
        wait(marker.exists, run)
        with redis_url(marker.read_text().strip(), tmp / "st" / "redis") as url:
            client = redis.Redis.from_url(url)
            done = Keys(model.name).counts()  # one HGET per poll; the full status only once the count is there

            def finished(n: int) -> Callable[[], bool]:
                return lambda: int(client.hget(done, DONE) or 0) >= n and batch_done(client, model)

            wait(finished(WARM), run)
            if idle_s:
                time.sleep(2.0)  # the warm-up batch's tail (deletes, reports) settles first
                cpu = tree_cpu(run.pid)
                time.sleep(idle_s)
                return idle_s, cpu_delta(cpu, tree_cpu(run.pid))
            staged = tmp / "staged"
            shutil.copytree(images, staged)
            new = sorted(staged.glob("*.jpg"))
            batch = Keys(model.name).batch()
            warm_batch = client.hget(batch, "id")
            began, cpu = time.perf_counter(), tree_cpu(run.pid)
            for path in new:
                os.rename(path, inbox / f"new-{path.name}")  # atomic: never listed half-written
            wait(lambda: client.hget(batch, "id") != warm_batch, run)  # the manager found (some of) them
            picked = time.perf_counter() - began
            wait(finished(WARM + len(new)), run)
            seconds, used = time.perf_counter() - began, cpu_delta(cpu, tree_cpu(run.pid))
            PICKUP.append(picked)
            return seconds, used
    finally:
        run.terminate()  # --watch ends on SIGTERM/SIGINT like a service
        run.wait(60)


def wait(check: Callable[[], bool], run: subprocess.Popen[bytes], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if run.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"pipeline run ended or timed out (exit {run.returncode})")
        time.sleep(0.02)  # a cheap check: polling often takes (almost) nothing from the two cores


def bench_images(n: int, repeat: int, say: Callable[[str], None] | None = None) -> tuple[Row, dict[str, Any]]:
    """Part (e) of `python -m bench`: the row (images/min, pipeline vs sequential) and the per-run details.
    Pins this process (and so everything it starts) to CORES CPUs. Raises RuntimeError with fewer CPUs."""
    say = say or (lambda m: print(m, file=sys.stderr, flush=True))
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < CORES:
        raise RuntimeError(f"needs {CORES} CPUs, this process may use {len(cpus)}")
    os.sched_setaffinity(0, cpus[:CORES])  # inherited by the pipeline's every process
    os.environ.setdefault("IMAGING_CV_THREADS", "1")
    load_before = os.getloadavg()[0]
    runs: dict[str, list[tuple[float, float]]] = {"pipeline": [], "sequential": []}
    roles: list[dict[str, float]] = []  # per pipeline run: CPU seconds per role over the timed batch
    with tempfile.TemporaryDirectory() as root:
        tmp = Path(root)
        generate(tmp / "warm", WARM, seed=101)
        generate(tmp / "images", n, seed=7)
        for rep in range(repeat):
            for label, fn in (("pipeline", pipeline), ("sequential", sequential)):
                work = tmp / f"{label}-{rep}"
                work.mkdir()
                seconds, by_role = fn(tmp / "warm", tmp / "images", work)
                cpu = sum(by_role.values())
                runs[label].append((seconds, cpu))
                if label == "pipeline":
                    roles.append(by_role)
                picked = f", picked up after {PICKUP[-1] * 1000:.0f} ms" if label == "pipeline" and PICKUP else ""
                say(f"(e) run {rep + 1}/{repeat} {label:10} {n} images in {seconds:6.2f} s "
                    f"(cpu {cpu / n * 1000:5.1f} ms/image{picked})")
    wall = {k: [s for s, _ in v] for k, v in runs.items()}
    cpu = {k: median([c / n * 1000 for _, c in v]) for k, v in runs.items()}
    rate = {k: [n * 60 / s for s in v] for k, v in wall.items()}
    row = Row(f"{LABEL} on {CORES} cores, {n} images, both warm", median(rate["pipeline"]), "images/min",
              median(rate["sequential"]), "sequential script, same functions", "ratio>=", TARGET,
              rate["pipeline"], rate["sequential"])
    if load_before > 0.5:
        say(f"(e) warning: load average {load_before:.1f} before the run: something else was busy")
    by_role = {k: round(median([r.get(k, 0.0) / n * 1000 for r in roles]), 2) for k in roles[0]} if roles else {}
    return row, {"runs": runs, "wall_s": wall, "cpu_ms_per_image": cpu, "speedup": row.ratio or 0.0,
                 "pipeline_cpu_ms_per_image_by_role": dict(sorted(by_role.items(), key=lambda kv: -kv[1])),
                 "pickup_ms": [round(s * 1000, 1) for s in PICKUP[-repeat:]],
                 "loadavg": [load_before, os.getloadavg()[0]]}


def idle(seconds: float) -> dict[str, float]:
    """CPU ms per second each role of a warm, idle pipeline uses (nothing to do: polling, heartbeats, metrics)."""
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:CORES])
    os.environ.setdefault("IMAGING_CV_THREADS", "1")
    with tempfile.TemporaryDirectory() as root:
        tmp = Path(root)
        generate(tmp / "warm", WARM, seed=101)
        (tmp / "work").mkdir()
        _, by_role = pipeline(tmp / "warm", tmp / "none", tmp / "work", idle_s=seconds)
    return {k: round(v / seconds * 1000, 2) for k, v in sorted(by_role.items(), key=lambda kv: -kv[1])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.images", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "out" / "bench.json"), help="'' = do not save")
    parser.add_argument("--idle", type=float, default=0.0, metavar="SECONDS",
                        help="instead: CPU ms/s per role of a warm pipeline left idle this long")
    args = parser.parse_args(argv)
    if args.idle:
        roles = idle(args.idle)
        print(f"idle pipeline, {args.idle:g} s, cpu ms/s by role (total {sum(roles.values()):.1f}): "
              + ", ".join(f"{k} {v:.1f}" for k, v in roles.items() if v >= 0.05))
        return 0
    try:
        row, details = bench_images(args.n, args.repeat)
    except RuntimeError as exc:
        parser.error(str(exc))
    wall, cpu, speedup = details["wall_s"], details["cpu_ms_per_image"], details["speedup"]
    print(table([row]))
    print(f"{args.n} images on {CORES} of {os.cpu_count()} CPUs, medians of {args.repeat}:")
    for label in ("pipeline", "sequential"):
        print(f"  {label:10} {median(wall[label]):6.2f} s  {[round(s, 2) for s in wall[label]]}  "
              f"cpu {cpu[label]:.1f} ms/image")
    roles = details["pipeline_cpu_ms_per_image_by_role"]
    print("  pipeline cpu ms/image by role: " + ", ".join(f"{k} {v:.1f}" for k, v in roles.items() if v >= 0.05))
    print(f"  speed-up {speedup:.2f}x; target >= {TARGET}x: {'met' if speedup >= TARGET else 'MISSED'}; the mesh's "
          f"CPU overhead: {cpu['pipeline'] / cpu['sequential'] - 1:+.0%}")
    if args.out:
        config = {"command": " ".join(["python -m bench.images", *(sys.argv[1:] if argv is None else argv)]),
                  "n": args.n, "repeat": args.repeat, "cores": CORES}
        merge_save(Path(args.out), row, config, details, key="e", label=LABEL)
        print(f"saved to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
