"""The chaos check of the word count (the handed case /work/shared/cases/chaos-wordcount.sh, as the project's own):
examples/wordcount/pipeline.yaml over N generated files under `batchmesh run` on the embedded Redis while K role
processes (source, manager, the sharder and the merger, the map workers, the reducer) are SIGKILLed at random
moments (bench/chaos_driver.py) and the supervisor restarts them; then the written aggregate is compared with a
`collections.Counter` of the files, counted here on its own.

    python -m bench.chaos_wordcount --files 2000 --kills 30 [--delay-ms 40] [--seed 1] [--max-per-role 4]

A map sleeps --delay-ms per file (WORDCOUNT_DELAY_MS) so the kills land while it runs. Exit 0 when the run exits
0 and the aggregate is exact."""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import redis
import yaml

from services.core.embedded import redis_url
from services.core.spec import load_pipeline

from .chaos import _role_env, _tail
from .chaos_driver import Driver, local_roles, progress, sigkill

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "examples" / "wordcount" / "pipeline.yaml"
WORD = re.compile(r"[^\W_]+")  # the example's rule (examples/wordcount/workers.py), restated


def truth(texts: Path) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    for path in texts.rglob("*.txt"):
        counts.update(WORD.findall(path.read_text(encoding="utf-8", errors="replace").lower()))
    return counts


def run_wordcount(files: int, kills: int, *, workdir: Path, seed: int = 1, delay_ms: int = 40,
                  max_per_role: int = 4, timeout: float = 900,
                  visibility_timeout: float | None = None) -> dict[str, Any]:
    """`visibility_timeout` (seconds): run a copy of the example with this default instead of its 30 s, so that
    what a killed map held is reclaimed sooner (a short test); None runs the example as it is."""
    spec = SPEC
    if visibility_timeout is not None:
        doc = yaml.safe_load(SPEC.read_text())
        doc.setdefault("defaults", {})["visibility_timeout"] = visibility_timeout
        spec = workdir / "pipeline.yaml"  # its plugin path resolves against the working directory (ROOT)
        spec.write_text(yaml.safe_dump(doc, sort_keys=False))
    pipeline = load_pipeline(spec)
    texts, out, data_dir = workdir / "texts", workdir / "out", workdir / "state"
    subprocess.run([sys.executable, str(ROOT / "examples" / "wordcount" / "generate.py"), str(texts), "--files",
                    str(files), "--seed", str(seed)], check=True, capture_output=True)
    log_file = workdir / "run.log"
    with redis_url(None, data_dir / "redis") as url:  # the run shares this embedded server (core.redis_lease)
        client = redis.Redis.from_url(url)
        began = time.monotonic()
        with log_file.open("wb") as log:
            run = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "run", str(spec), "--input", str(texts), "--out", str(out),
                 "--quiet", "--timeout", str(timeout)], cwd=ROOT,
                env={**_role_env(data_dir), "WORDCOUNT_DELAY_MS": str(delay_ms)}, stdin=subprocess.DEVNULL,
                stdout=log, stderr=log, start_new_session=True)

        stop = threading.Event()
        driver = Driver(find=lambda: local_roles(run.pid, pipeline), kill=sigkill, kills=kills,
                        progress=lambda: progress(client, pipeline, files, "total"),
                        seed=seed, max_per_role=max_per_role, done=lambda: run.poll() is not None)
        thread = threading.Thread(target=driver.run, args=(stop,), daemon=True)
        thread.start()
        try:
            rc = run.wait(timeout=timeout + 60)
        finally:
            stop.set()
            thread.join(timeout=5)
        wall = time.monotonic() - began
        client.close()
    expected = truth(texts)
    try:
        doc = json.loads((out / "wordcount.json").read_text())
    except (OSError, ValueError):
        doc = {"aggregate": {}}
    got = collections.Counter(doc["aggregate"].get("words", {}))
    diff = (expected - got) + (got - expected)
    return {"variant": "wordcount (batchmesh run, embedded Redis, SIGKILL)", "files": files, "run_exit": rc,
            "wall_s": round(wall, 1), **driver.figures(), "final": doc.get("final"),
            "files_folded": doc["aggregate"].get("files"), "tokens": sum(expected.values()),
            "words_differing": len(diff), "exact": not diff and doc.get("final") is True,
            "ok": rc == 0 and not diff and doc.get("final") is True, "log_tail": _tail(log_file)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--delay-ms", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-per-role", type=int, default=4)
    parser.add_argument("--json", type=Path, default=ROOT / "out" / "chaos-wordcount.json")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bm-chaos-wc-"))
    try:
        f = run_wordcount(args.files, args.kills, workdir=workdir, seed=args.seed, delay_ms=args.delay_ms,
                          max_per_role=args.max_per_role)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"wordcount chaos: {f['files']} files, exit {f['run_exit']}, final {f['final']}, files folded "
          f"{f['files_folded']}, {'EXACT' if f['exact'] else str(f['words_differing']) + ' words differ'} "
          f"({f['tokens']} tokens), {f['wall_s']} s; kills {f['kills']} {f['kills_per_role']}")
    if not f["ok"]:
        print("\n".join(f["log_tail"]), file=sys.stderr)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(f, indent=1) + "\n")
    return 0 if f["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
