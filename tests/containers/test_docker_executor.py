"""The `docker` executor against a real engine and the worker image: the thumbnailer through `batchmesh run`
(thumbnails for the good videos, the corrupt one dead-lettered with ffmpeg's reason), a hostile worker that shows
its sandbox (no network, read-only except its output dir, not root, no host files, killed at the timeout, OOM,
poison items dead-lettered with their stderr), and adoption of a container after a manager crash (the item runs
exactly once). Nothing with the project's labels is left on the engine."""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from prometheus_client import REGISTRY

from services.core import Keys, Progress, Settings, StreamConsumer, list_dead_letters
from services.core.results import results
from services.core.spec import load_pipeline
from services.manager.diff import Dispatcher
from services.manager.executors import StageContext, stage_settings
from services.manager.executors.docker import LABEL, DockerExecutor, container_name, project_containers
from services.render.roles import worker_image as worker_image_tag

ROOT = Path(__file__).resolve().parents[2]
IMAGE = worker_image_tag(["video"])  # the image the worker_image fixture builds (ffmpeg, no OpenCV)


def wait_for(check: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met in {timeout:g}s")
        time.sleep(0.05)


def write_spec(path: Path, name: str, work: dict[str, Any], **top: Any) -> Path:
    spec = {"apiVersion": "batchmesh/v1", "kind": "Pipeline", "name": name,
            "source": top.pop("source", {"type": "jsonl", "path": "items.jsonl"}),
            "stages": {"w": {"work": {"input": "source", "executor": "docker", **work}}}, **top}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def dispatch(client: redis.Redis, name: str, items: dict[str, dict[str, Any]]) -> None:
    keys = Keys(name)
    Dispatcher(client, keys, Progress(client, keys), batch="b").dispatch(
        [{"name": k, "version": "v1", **v} for k, v in items.items()])


def counts(client: redis.Redis, name: str) -> dict[str, int]:
    return Progress(client, Keys(name)).counts()


@pytest.fixture
def executors(client: redis.Redis, settings: Settings, tmp_path: Path) -> Iterator[list[DockerExecutor]]:
    started: list[DockerExecutor] = []
    yield started
    for executor in started:
        executor.stop(60)


def start_executor(client: redis.Redis, settings: Settings, spec_path: Path, out: Path,
                   started: list[DockerExecutor]) -> DockerExecutor:
    pipeline = load_pipeline(spec_path)
    ctx = StageContext(client, pipeline, "w", stage_settings(pipeline, "w", settings.model_copy(
        update={"out_dir": out})), spec_path)
    executor = DockerExecutor(ctx)
    started.append(executor)
    return executor


@pytest.fixture(autouse=True)
def no_leftovers(docker_client: Any, worker_image: str, pipeline_name: str) -> Iterator[None]:
    yield
    left = project_containers(docker_client, pipeline_name)
    for container in left:
        container.remove(force=True)
    assert not left, f"containers left behind: {[c.name for c in left]}"


# -- the thumbnailer, for real ------------------------------------------------------------------------------

def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("thumb_generate", ROOT / "examples/thumbnailer/generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def test_thumbnailer_in_containers(tmp_path: Path, pipeline_name: str, docker_client: Any) -> None:
    videos = tmp_path / "videos"
    _generator().generate(videos, count=3, corrupt=1)
    spec = load_pipeline(ROOT / "examples/thumbnailer/pipeline.yaml").model_dump(by_alias=True, exclude_none=True,
                                                                                  exclude_defaults=True)
    work = spec["stages"]["thumbnails"]["work"]
    work.update(executor="docker", concurrency=2, replicas=1,
                container={"image": IMAGE, "mounts": ["examples/thumbnailer"], "memory": "256m"})
    spec["name"] = pipeline_name
    path = tmp_path / "spec" / "pipeline.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    env = {**os.environ, "BATCHMESH_DATA_DIR": str(tmp_path / "state")}
    env.pop("REDIS_URL", None)
    began = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "services.cli", "run", str(path), "--input", str(videos),
                          "--out", str(tmp_path / "out"), "--quiet", "--timeout", "150"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=180)
    assert run.returncode == 1, run.stderr[-3000:]  # 1: an item was dead-lettered
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert len(manifest["results"]) == 3, manifest
    for name, result in manifest["results"].items():
        png = Path(result["thumbnail"])  # the container wrote it at the host's path: the mount is the same path
        assert png.is_file() and png.parent.name == name
        assert png_size(png) == (320, result["height"])
    [dead] = manifest["dead_letters"]
    assert dead["item"].startswith("corrupt-") and "moov atom not found" in dead["reason"]
    assert dead["reason"].startswith("exit code 1: thumbnail: corrupt-")  # the stderr tail of the container
    assert dead["deliveries"] == 3
    print(f"thumbnailer in containers: {time.monotonic() - began:.1f}s")


# -- a hostile worker ---------------------------------------------------------------------------------------

HOSTILE = r'''
import json, os, socket, sys, time
item = json.load(open(os.environ["WORK_ITEM_FILE"]))
data, out = item["data"], os.environ["WORK_OUTPUT_DIR"]
kind = data.get("kind", "probe")
if kind == "sleep":
    print("going to sleep", file=sys.stderr, flush=True)
    time.sleep(120)
if kind == "poison":
    print("poison: cannot frobnicate this item", file=sys.stderr)
    sys.exit(3)
if kind == "oom":
    print("allocating", file=sys.stderr, flush=True)
    hog = [bytearray(16 * 1024 * 1024) for _ in range(64)]
    sys.exit(0)

def attempt(fn):
    try:
        fn()
        return "ok"
    except Exception as exc:
        return type(exc).__name__ + ": " + str(exc)

def connect(port):
    socket.create_connection(("127.0.0.1", port), timeout=2).close()

def write(path):
    with open(path, "w") as f:
        f.write("x")

status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\t" in line)
report = {
    "uid": os.getuid(), "gid": os.getgid(),
    "interfaces": [name for _, name in socket.if_nameindex()],
    "connect_host_redis": attempt(lambda: connect(data["redis_port"])),
    "lookup": attempt(lambda: socket.getaddrinfo("localhost.batchmesh.invalid", 80)),
    "writes": {p: attempt(lambda p=p: write(p)) for p in [
        "/probe", "/app/probe", "/etc/probe", os.path.join(os.getcwd(), "probe"),
        os.path.join(data["spec_dir"], "probe"), os.path.join(out, "ok.txt"), "/tmp/scratch"]},
    "reads": {p: attempt(lambda p=p: open(p).read()) for p in [
        data["secret"], data["repo_file"], "/var/run/docker.sock", os.environ["WORK_ITEM_FILE"]]},
    "cap_eff": status["CapEff"].strip(), "no_new_privs": status.get("NoNewPrivs", "").strip(),
    "env_keys": sorted(k for k in os.environ if k.startswith(("WORK_", "REDIS", "BATCHMESH_SECRET"))),
}
with open(os.path.join(out, "result.json"), "w") as f:
    json.dump(report, f)
'''


def container_lifetimes(engine: Any, since: int, pipeline: str, item: str) -> list[float]:
    """Seconds from start to die of each container the item had, from the engine's events."""
    started: dict[str, int] = {}
    lived = []
    for event in engine.events(since=since, until=int(time.time()) + 1, decode=True, filters={
            "type": "container", "label": [f"{LABEL}.pipeline={pipeline}", f"{LABEL}.item={item}"]}):
        if event["status"] == "start":
            started[event["id"]] = event["timeNano"]
        elif event["status"] == "die" and event["id"] in started:
            lived.append((event["timeNano"] - started[event["id"]]) / 1e9)
    return lived


def test_hostile_worker_meets_its_sandbox(client: redis.Redis, settings: Settings, pipeline_name: str,
                                         tmp_path: Path, executors: list[DockerExecutor], redis_url: str,
                                         monkeypatch: pytest.MonkeyPatch, docker_client: Any) -> None:
    spec_dir = tmp_path / "spec"
    spec_dir.mkdir(mode=0o755)
    (spec_dir / "hostile.py").write_text(HOSTILE)
    secret = tmp_path / "secret.txt"  # on the host, not mounted
    secret.write_text("the host's secret")
    monkeypatch.setenv("BATCHMESH_SECRET_TOKEN", "not for workers")  # the manager's env never reaches a container
    path = write_spec(spec_dir / "pipeline.yaml", pipeline_name, {
        "command": ["python", str(spec_dir / "hostile.py")], "concurrency": 4, "timeout": "3s",
        "max_deliveries": 2, "container": {"image": IMAGE, "memory": "96m", "pids": 64, "cpus": 0.5}})
    executor = start_executor(client, settings, path, tmp_path / "out", executors)
    executor.start()
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    probe = {"redis_port": port, "spec_dir": str(spec_dir), "secret": str(secret),
             "repo_file": str(ROOT / "pyproject.toml")}
    began, since = time.monotonic(), int(time.time()) - 1
    dispatch(client, pipeline_name, {"probe-1": probe, "probe-2": probe, "sleepy": {"kind": "sleep"},
                                     "poison": {"kind": "poison"}, "hog": {"kind": "oom"}})
    wait_for(lambda: counts(client, pipeline_name)["done"] == 2 and counts(client, pipeline_name)["dead"] == 3,
             timeout=60, what="2 done, 3 dead")
    elapsed = time.monotonic() - began

    report = results(client, Keys(pipeline_name))["probe-1"]
    print(json.dumps(report, indent=1))
    assert report["uid"] != 0 and report["gid"] != 0
    assert report["interfaces"] == ["lo"]
    assert report["connect_host_redis"].startswith("ConnectionRefusedError")  # its own loopback, not the host's
    assert report["lookup"].startswith("gaierror")
    writes = report["writes"]
    assert writes.pop(str(tmp_path / "out" / "w" / "probe-1" / "ok.txt")) == "ok"
    assert writes.pop("/tmp/scratch") == "ok"  # the tmpfs
    # refused either way: the read-only root (EROFS), or a directory the engine made root-owned (EACCES), such as
    # the working directory when it is not a mount
    assert all("Read-only file system" in why or "Permission denied" in why for why in writes.values()), writes
    reads = report["reads"]
    assert reads.pop("/batchmesh/item.json") == "ok"
    assert all(why.startswith("FileNotFoundError") for why in reads.values()), reads
    assert report["cap_eff"] == "0000000000000000" and report["no_new_privs"] == "1"
    assert report["env_keys"] == ["WORK_ITEM_FILE", "WORK_OUTPUT_DIR"]
    assert (tmp_path / "out" / "w" / "probe-1" / "ok.txt").read_text() == "x"  # the one writable mount is the host's

    letters = {d.item_id: d for d in list_dead_letters(client, Keys(pipeline_name), "w")}
    assert set(letters) == {"sleepy", "poison", "hog"}
    assert all(d.deliveries == 2 for d in letters.values())
    assert letters["sleepy"].reason == "timeout after 3s: going to sleep"
    assert letters["poison"].reason == "exit code 3: poison: cannot frobnicate this item"
    assert letters["hog"].reason.startswith("OOM killed (memory limit 96m)"), letters["hog"].reason
    # Two attempts of the sleeper, each killed at 3 s: dead-lettered after ~6 s (plus two container starts and a
    # retry backoff, slow on a loaded engine), not after its 120 s of sleep.
    assert 6 <= elapsed < 60, elapsed
    lived = container_lifetimes(docker_client, since, pipeline_name, "sleepy")
    assert len(lived) == 2 and all(3 <= s < 3 + 5 for s in lived), lived  # start -> die: killed at the timeout
    labels = {"pipeline": pipeline_name, "stage": "w"}
    assert REGISTRY.get_sample_value("batchmesh_processing_seconds_count", labels) == 2 + 3 * 2
    assert REGISTRY.get_sample_value("batchmesh_items_dead_lettered_total", labels) == 3
    executor.stop(30)
    print(f"hostile worker: {elapsed:.1f}s until every item was settled")


# -- adoption after a manager crash -------------------------------------------------------------------------

ONCE = r'''
import json, os, time
item = json.load(open(os.environ["WORK_ITEM_FILE"]))
out = os.environ["WORK_OUTPUT_DIR"]
with open(os.path.join(out, "runs.log"), "a") as f:
    f.write(f"{time.time()}\n")
time.sleep(item["data"].get("sleep", 0))
print(json.dumps({"item": item["id"], "attempt": item["attempt"]}))
'''


def test_restarted_manager_adopts_containers(client: redis.Redis, settings: Settings, pipeline_name: str,
                                             tmp_path: Path, executors: list[DockerExecutor],
                                             docker_client: Any) -> None:
    spec_dir = tmp_path / "spec"
    spec_dir.mkdir(mode=0o755)
    (spec_dir / "once.py").write_text(ONCE)
    path = write_spec(spec_dir / "pipeline.yaml", pipeline_name, {
        "command": ["python", str(spec_dir / "once.py")], "concurrency": 4, "timeout": "30s",
        "container": {"image": IMAGE}})
    out = tmp_path / "out"
    since = int(time.time()) - 1
    dispatch(client, pipeline_name, {"running": {"sleep": 3}, "exited": {}, "created": {}})

    # The first manager reads the entries, then "crashes": one container still running, one exited with its
    # result, one created but never started. None of them is waited for, committed or removed.
    crashed = start_executor(client, settings, path, out, [])
    consumer = StreamConsumer(client, crashed.ctx.settings, stage="w", input_stream="source", consumer="crashed")
    deliveries = {d.item.id: d for d in consumer.read(count=10) if d.item is not None}
    assert set(deliveries) == {"running", "exited", "created"}
    names = {}
    for item_id, delivery in deliveries.items():
        names[item_id] = name = container_name(pipeline_name, "w", delivery)
        item_out = crashed.ctx.out_dir / delivery.item.dirname
        item_file = crashed.items_dir / f"{name}.json"
        if item_id == "created":
            crashed._create(name, delivery, item_out, item_file)
        else:
            crashed._create_or_adopt(name, delivery, item_out, item_file)
    docker_client.containers.get(names["exited"]).wait(timeout=30)
    assert docker_client.containers.get(names["running"]).status == "running"
    # A leftover of an entry that is no longer pending (committed, then the crash lost the removal): swept.
    ghost = crashed._create(f"bm-{pipeline_name}-w-ghost", type(delivery)(b"1-1", delivery.item.model_copy(
        update={"id": "ghost"}), 1), out / "w" / "ghost", crashed.items_dir / "ghost.json")

    restarted = start_executor(client, settings, path, out, executors)
    creates: list[str] = []
    real_create = restarted.engine.api.create_container  # what ContainerCollection.create calls

    def counting_create(*args: Any, **kwargs: Any) -> Any:
        creates.append(kwargs["name"])
        return real_create(*args, **kwargs)

    restarted.engine.api.create_container = counting_create  # type: ignore[method-assign]
    restarted.start()
    wait_for(lambda: counts(client, pipeline_name)["done"] == 3, timeout=60, what="3 done")
    restarted.stop(30)

    got = results(client, Keys(pipeline_name))
    assert got == {i: {"item": i, "attempt": 1} for i in names}
    for item_id in names:  # each ran once: one line in its runs.log, one container ever created and started
        assert len((out / "w" / item_id / "runs.log").read_text().splitlines()) == 1, item_id
    assert sorted(creates) == sorted(names.values())  # every create was refused (409) and the container adopted
    events = docker_client.events(since=since, until=int(time.time()) + 1, decode=True,
                                  filters={"label": f"{LABEL}.pipeline={pipeline_name}", "type": "container"})
    seen: dict[str, list[str]] = {}
    for event in events:
        seen.setdefault(event["Actor"]["Attributes"]["name"], []).append(event["status"])
    for item_id, name in names.items():
        assert seen[name].count("create") == 1 and seen[name].count("start") == 1, (item_id, seen[name])
    assert "destroy" in seen[ghost.name]
    assert client.hgetall(Keys(pipeline_name).stage_stats("w")) == {b"out": b"3"}
    import shutil

    shutil.rmtree(crashed.items_dir, ignore_errors=True)



# -- chains and in-process workers --------------------------------------------------------------------------

def test_in_process_worker_runs_the_one_shot_runtime_in_the_image(
        client: redis.Redis, settings: Settings, pipeline_name: str, tmp_path: Path,
        executors: list[DockerExecutor]) -> None:
    spec_dir = tmp_path / "spec"
    spec_dir.mkdir(mode=0o755)
    path = write_spec(spec_dir / "pipeline.yaml", pipeline_name, {"worker": "echo", "container": {"image": IMAGE}})
    executor = start_executor(client, settings, path, tmp_path / "out", executors)
    assert executor.argv == ["python", "-m", "services.workers.once", "--pipeline", str(path), "--stage", "w"]
    assert executor.fixed_mounts == {str(spec_dir): True}  # the spec, read-only, for `once` to load
    executor.start()
    dispatch(client, pipeline_name, {"a": {"n": 1}, "b": {"n": 2}})
    wait_for(lambda: counts(client, pipeline_name)["done"] == 2, timeout=60, what="2 done")
    got = results(client, Keys(pipeline_name))
    assert got["a"]["n"] == 1 and got["b"]["n"] == 2



def test_outcome_lost_to_a_redis_outage_is_taken_from_the_container(
        client: redis.Redis, settings: Settings, pipeline_name: str, tmp_path: Path,
        executors: list[DockerExecutor], docker_client: Any) -> None:
    """Redis goes away after the containers exited and before their outcomes were committed: the containers
    stay; once Redis answers, the executor's loop starts over, reclaims the entries, adopts the exited containers
    and commits their results. Nothing runs twice."""
    spec_dir = tmp_path / "spec"
    spec_dir.mkdir(mode=0o755)
    (spec_dir / "once.py").write_text(ONCE)
    path = write_spec(spec_dir / "pipeline.yaml", pipeline_name, {
        "command": ["python", str(spec_dir / "once.py")], "concurrency": 2, "container": {"image": IMAGE}})
    out = tmp_path / "out"
    since = int(time.time()) - 1
    executor = start_executor(client, settings, path, out, executors)
    real_commit, failed = executor.commit, []

    def redis_gone_for_a_while(commit: Any) -> None:
        if len(failed) < 2 and commit.completed:  # the loop's commit, then the one its `finally` tries
            failed.append([c.name for c in project_containers(docker_client, pipeline_name)])
            raise redis.ConnectionError("Redis went away")
        real_commit(commit)

    creates: list[str] = []
    real_create = executor.engine.api.create_container  # what ContainerCollection.create calls

    def counting_create(*args: Any, **kwargs: Any) -> Any:
        creates.append(kwargs["name"])
        return real_create(*args, **kwargs)

    executor.engine.api.create_container = counting_create  # type: ignore[method-assign]
    executor.commit = redis_gone_for_a_while  # type: ignore[method-assign]
    executor.start()
    dispatch(client, pipeline_name, {"x": {}, "y": {}})
    wait_for(lambda: counts(client, pipeline_name)["done"] == 2, timeout=30, what="2 done")
    executor.stop(30)
    assert len(failed) == 2 and failed[1], "the outage came before any container was left"
    adopted = [name for name in set(creates) if creates.count(name) == 2]  # created, then refused (409)
    assert sorted(adopted) == sorted(failed[1]), creates
    assert results(client, Keys(pipeline_name)) == {i: {"item": i, "attempt": 1} for i in "xy"}
    for item_id in "xy":
        assert len((out / "w" / item_id / "runs.log").read_text().splitlines()) == 1
    events = docker_client.events(since=since, until=int(time.time()) + 1, decode=True,
                                  filters={"label": f"{LABEL}.pipeline={pipeline_name}", "type": "container"})
    seen: dict[str, list[str]] = {}
    for event in events:
        seen.setdefault(event["Actor"]["Attributes"]["name"], []).append(event["status"])
    assert len(seen) == 2 and all(s.count("create") == 1 and s.count("start") == 1 for s in seen.values()), seen



def test_the_engine_socket_is_never_mounted(client: redis.Redis, settings: Settings, pipeline_name: str,
                                            tmp_path: Path) -> None:
    path = write_spec(tmp_path / "pipeline.yaml", pipeline_name, {
        "command": ["true"], "container": {"image": IMAGE, "mounts": ["/var/run"]}})
    with pytest.raises(ValueError, match="holds a socket"):
        start_executor(client, settings, path, tmp_path / "out", [])

