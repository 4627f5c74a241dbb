"""The image pipeline on 2 cores vs a sequential script of the same algorithms (target >= 1.7x).

    python -m bench.images [--n 60] [--repeat 3]

Both sides warm first, as a deployed service and a long-running script would be: the pipeline (`batchmesh run
--watch`, every role its own process) processes a warm-up batch, then N new images are moved into its input
directory and timed until the batch is done (the report written, originals deleted); the sequential script
(`imaging.sequential.run`, in this process, OpenCV single-threaded like the workers) runs the warm-up images,
then is timed on the same N images. Same images, same worker functions, same outputs."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
import yaml

from services.core.embedded import redis_url
from services.core.spec import Pipeline
from services.manager import batch_done, status

from .common import median

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "images"
WARM = 8


def generate(target: Path, count: int, seed: int) -> list[Path]:
    subprocess.run([sys.executable, str(EXAMPLE / "generate.py"), str(target), "--count", str(count),
                    "--seed", str(seed)], check=True, capture_output=True)
    return sorted(target.glob("*.jpg"))


def sequential(warm: Path, images: Path, tmp: Path) -> float:
    sys.path[:0] = [str(EXAMPLE)]
    from imaging.sequential import run  # the example's own package, as sequential.py imports it

    run(warm, tmp / "seq-warm")
    began = time.perf_counter()
    run(images, tmp / "seq")
    return time.perf_counter() - began


def pipeline(warm: Path, images: Path, tmp: Path) -> float:
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
        while not marker.exists():
            time.sleep(0.05)
        with redis_url(marker.read_text().strip(), tmp / "st" / "redis") as url:
            client = redis.Redis.from_url(url)
            wait(lambda: batch_done(client, model) and status(client, model)["counts"]["done"] >= WARM, run)
            staged = tmp / "staged"
            shutil.copytree(images, staged)
            want = WARM + len(list(staged.glob("*.jpg")))
            began = time.perf_counter()
            for path in sorted(staged.glob("*.jpg")):
                os.rename(path, inbox / f"new-{path.name}")  # atomic: never listed half-written
            wait(lambda: status(client, model)["counts"]["done"] >= want and batch_done(client, model), run)
            return time.perf_counter() - began
    finally:
        run.terminate()  # --watch ends on SIGTERM/SIGINT like a service
        run.wait(60)


def wait(check, run: subprocess.Popen[bytes], timeout: float = 600) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if run.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"pipeline run ended or timed out (exit {run.returncode})")
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.images", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    os.environ.setdefault("IMAGING_CV_THREADS", "1")
    ours, base = [], []
    with tempfile.TemporaryDirectory() as root:
        tmp = Path(root)
        generate(tmp / "warm", WARM, seed=101)
        generate(tmp / "images", args.n, seed=7)
        for rep in range(args.repeat):
            for label, fn, samples in (("pipeline", pipeline, ours), ("sequential", sequential, base)):
                work = tmp / f"{label}-{rep}"
                work.mkdir()
                seconds = fn(tmp / "warm", tmp / "images", work)
                samples.append(seconds)
                print(f"run {rep + 1}/{args.repeat} {label:10} {args.n} images in {seconds:6.2f} s", file=sys.stderr,
                      flush=True)
    ratio = median(base) / median(ours)
    print(f"{args.n} images, {os.cpu_count()} cores, medians of {args.repeat}:")
    print(f"  pipeline   {median(ours):6.2f} s  {[round(s, 2) for s in ours]}")
    print(f"  sequential {median(base):6.2f} s  {[round(s, 2) for s in base]}")
    print(f"  speed-up {ratio:.2f}x; target >= 1.7x: {'met' if ratio >= 1.7 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
