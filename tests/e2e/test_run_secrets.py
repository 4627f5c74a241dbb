"""Secrets never leave a run: `batchmesh run` against a real redis-server with a password (requirepass) and an ACL
user with its own password (tests/integration/secure_redis.py), a source that wants a bearer token, and workers
that try to leak them — an in-process worker raising an exception whose message holds REDIS_URL, the token and
the password and printing its whole environment to stdout and stderr, a command worker dumping its environment
to stderr before it exits 1. Then every output of the run is searched for each secret, as is, percent-encoded,
`+`-encoded and JSON-escaped: the run's stdout and stderr, every role log, every /metrics scrape of every role
while it ran (the runner's Prometheus targets file), `batchmesh status`, `batchmesh dlq list`, manifest.json,
the output files, and the dead-letter streams' raw entries. The attempts themselves are checked to have happened
(the reasons hold `***` where a secret was, the command's dump ran), so the test cannot pass by leaking nothing
because nothing was tried."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import quote, quote_plus

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from secure_redis import PASSWORD, USER_PASSWORD, SecureRedis  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "t0ken-of-the-source/+="  # noqa: S105 - a test's
NAME = "secrets"

WORKERS = '''
import os, sys, time
from batchmesh import worker

@worker("leaky", writes=False)
def leaky(item, output_dir):
    name = item["data"]["name"]
    time.sleep(0.3)  # the run lasts long enough for its roles' /metrics to be scraped
    if name.startswith("bad-a"):
        print("ENV", dict(os.environ))
        print("ENV", dict(os.environ), file=sys.stderr)
        raise RuntimeError("cannot reach " + os.environ["REDIS_URL"] + " token " + os.environ["BATCHMESH_SOURCE_TOKEN"]
                           + " password " + os.environ["BATCHMESH_REDIS_PASSWORD"])
    return {"name": name}
'''
DUMP = '''
import json, os, sys
item = json.load(open(os.environ["WORK_ITEM_FILE"]))
if item["data"]["name"].startswith("bad-b"):
    print(json.dumps(dict(os.environ)), file=sys.stderr)
    print("REDIS_URL=" + os.environ.get("REDIS_URL", "<absent>") + " TOKEN="
          + os.environ.get("BATCHMESH_SOURCE_TOKEN", "<absent>"), file=sys.stderr)
    sys.exit(1)
print(json.dumps({"ok": True}))
'''


def forms(secret: str) -> set[str]:
    return {secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1]}


def write_pipeline(tmp: Path) -> tuple[Path, Path]:
    (tmp / "workers.py").write_text(WORKERS)
    (tmp / "dump.py").write_text(DUMP)
    source = tmp / "in"
    source.mkdir()
    for name in ("good-1", "good-2", "good-3", "bad-a1", "bad-a2", "bad-b1"):
        (source / f"{name}.txt").write_text(name)
    spec = {
        "apiVersion": "batchmesh/v1", "kind": "Pipeline", "name": NAME, "plugins": ["workers.py"],
        "source": {"type": "directory", "path": str(source), "glob": "*.txt"},
        "defaults": {"max_deliveries": 1, "visibility_timeout": "5s"},
        "stages": {
            "leak": {"work": {"input": "source", "worker": "leaky"}},
            "dump": {"work": {"input": "leak", "command": [sys.executable, "dump.py"]}},
        },
    }
    path = tmp / "pipeline.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path, source


class Scraper(threading.Thread):
    """Scrapes every role's /metrics named in the runner's targets file, and the source's, until stopped."""

    def __init__(self, targets: Path) -> None:
        super().__init__(daemon=True)
        self.targets, self.stop, self.pages, self.ports = targets, threading.Event(), [], set()

    def run(self) -> None:
        while not self.stop.wait(0.2):
            try:
                entries = json.loads(self.targets.read_text())
            except (OSError, ValueError):
                continue
            for entry in entries:
                for target in entry["targets"]:
                    try:
                        reply = httpx.get(f"http://{target}/metrics", timeout=1)
                    except httpx.HTTPError:
                        continue
                    self.pages.append(reply.text)
                    self.ports.add(entry["labels"].get("role_name"))


def test_no_secret_in_any_output_of_a_run(tmp_path: Path) -> None:
    server = SecureRedis(tmp_path / "redis").start()
    try:
        spec, _ = write_pipeline(tmp_path)
        data = tmp_path / "state"
        env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHMESH_") and k != "REDIS_URL"}
        env |= {"REDIS_URL": server.url(), "BATCHMESH_REDIS_PASSWORD": PASSWORD, "BATCHMESH_SOURCE_TOKEN": TOKEN,
                "BATCHMESH_DATA_DIR": str(data)}
        scraper = Scraper(data / "run" / NAME / "targets.json")
        scraper.start()
        run = subprocess.run([sys.executable, "-m", "services.cli", "run", str(spec), "--out", str(tmp_path / "out"),
                              "--timeout", "90"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=150)
        scraper.stop.set()
        scraper.join()
        assert run.returncode == 1, run.stderr[-3000:]  # dead letters: exit 1, the good items done
        outputs = {"run stdout": run.stdout, "run stderr": run.stderr}
        for command in (["status", str(spec)], ["dlq", "list", str(spec)]):
            result = subprocess.run([sys.executable, "-m", "services.cli", *command], cwd=tmp_path, env=env,
                                    capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, result.stderr
            outputs[" ".join(command[:2])] = result.stdout + result.stderr
        letters = [json.loads(line) for line in outputs["dlq list"].splitlines() if line.startswith("{")]
        for log in sorted((data / "logs" / NAME).glob("*")):
            outputs[f"log {log.name}"] = log.read_text(errors="replace")
        for path in sorted((tmp_path / "out").rglob("*")):
            if path.is_file():
                outputs[f"out {path.relative_to(tmp_path)}"] = path.read_text(errors="replace")
        for i, page in enumerate(scraper.pages):
            outputs[f"metrics scrape {i}"] = page
        admin = server.admin()
        for stage in ("leak", "dump"):
            entries = admin.xrange(f"bm:{{{NAME}}}:dlq:{stage}")
            outputs[f"dead letters {stage}"] = repr(entries) + "".join(
                v.decode(errors="replace") for _, fields in entries for v in fields.values())
    finally:
        server.stop()

    # What was tried: two in-process failures whose messages held the secrets, one command that dumped its env.
    reasons = {letter["item"].removesuffix(".txt"): letter["reason"] for letter in letters}
    assert set(reasons) == {"bad-a1", "bad-a2", "bad-b1"}, letters
    assert all(reasons[n].count("***") >= 3 for n in ("bad-a1", "bad-a2")), reasons  # masked where they were
    assert "REDIS_URL=<absent> TOKEN=<absent>" in reasons["bad-b1"], reasons["bad-b1"]  # not in a command's env
    assert any("ENV {" in text for name, text in outputs.items() if name.startswith("log worker-leak")), \
        "the worker's environment dump reached its log (masked)"
    assert scraper.pages and {"source", "manager"} <= scraper.ports, scraper.ports
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert len(manifest["dead_letters"]) == 3 and len(manifest["results"]) == 3

    leaks = [(name, secret_name, form) for name, text in outputs.items()
             for secret_name, secret in (("redis password", PASSWORD), ("ACL user password", USER_PASSWORD),
                                         ("source token", TOKEN))
             for form in forms(secret) if form in text]
    assert leaks == [], f"secrets found in outputs: {leaks}"
    assert len(outputs) > 10, sorted(outputs)


