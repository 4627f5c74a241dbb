"""`docker`: the book's one-shot worker as a container. Like `process` (whose loop it reuses: read-ahead, batched
commits, heartbeats of long items, `work.concurrency` at a time) but every item runs in its own sandboxed
container, through the docker SDK, per the worker contract:

- argv is exactly the stage's command (the image's ENTRYPOINT is replaced; never a shell). Chains and
  in-process workers run `python -m services.workers.once --pipeline P --stage S` in the image, which must have
  batchmesh installed (the worker image has).
- WORK_ITEM_FILE: the item, written on the host in a private directory, mounted read-only at ITEM_PATH.
  WORK_OUTPUT_DIR: the item's output directory, mounted at its host path: the only writable mount (plus a small
  tmpfs on /tmp). Read-only at their host paths: the input file's directory (items a `directory` source lists
  carry a file:// uri), the spec's directory when the command names a file in it (or runs `once`), and
  `container.mounts`. The working dir is the manager's own, so `[python, examples/x/y.py]` means the same path.
- Sandbox: no network (network_mode none), read-only root filesystem, all capabilities dropped,
  no-new-privileges, a non-root user, memory (no swap), CPU and pid limits, the image's HEALTHCHECK off.
- Exit 0 = done, the result JSON from $WORK_OUTPUT_DIR/result.json or stdout; non-zero, the stage's timeout (the
  container is killed) or an OOM kill = a failed attempt whose reason ends with the container's stderr tail.
- The container is always removed, once its outcome is committed (not before: see below). Its name is a hash of
  (pipeline, stage, item id, version, attempt, stream entry), and labels name them too: an entry re-read after a
  manager restart finds its container (409 Conflict on create) and *adopts* it — waits for it if it still runs,
  takes its result if it exited — instead of running the item a second time. So a manager crash at any point
  never runs an item twice, as long as the engine keeps the container (a crash before the create: it runs
  once, later). At start, containers of this stage whose entry is no longer pending (a crash between commit and
  removal) are removed: `docker ps -a --filter label=io.batchmesh.pipeline=NAME` lists what is left any time.

Bind mounts are host paths: the engine must run on the manager's machine (its local socket)."""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import shutil
import stat
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from services.core import Commit, Delivery, Keys
from services.core.command import STDERR_TAIL, Outcome, item_document, read_result
from services.core.item import WorkItem
from services.core.spec import StageContainer

from .base import StageContext
from .process import ProcessExecutor

log = logging.getLogger(__name__)

LABEL = "io.batchmesh"
ITEM_PATH = "/batchmesh/item.json"
STDERR_LINES = 200  # lines of stderr fetched for the reason (its last STDERR_TAIL characters are kept)


def container_name(pipeline: str, stage: str, delivery: Delivery) -> str:
    """The same for every read of one stream entry (a reclaim after a crash), different for a retry (a new entry)
    and for a replay; valid as a docker name ([a-zA-Z0-9][a-zA-Z0-9_.-]*)."""
    item = delivery.item
    assert item is not None
    parts = [pipeline, stage, item.id, item.version or "", str(item.attempts), delivery.entry_id.decode()]
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]
    return f"bm-{pipeline}-{stage}-{digest}"


def labels_of(pipeline: str, stage: str, delivery: Delivery) -> dict[str, str]:
    item = delivery.item
    assert item is not None
    return {f"{LABEL}.pipeline": pipeline, f"{LABEL}.stage": stage, f"{LABEL}.item": item.id[:1024],
            f"{LABEL}.entry": delivery.entry_id.decode(), f"{LABEL}.attempt": str(item.attempts + 1)}


def project_containers(engine: Any, pipeline: str | None = None, stage: str | None = None) -> list[Any]:
    """Every container (running or not) the docker executor made, of one pipeline (and stage) if given."""
    wanted = [f"{LABEL}.pipeline" if pipeline is None else f"{LABEL}.pipeline={pipeline}"]
    if stage is not None:
        wanted.append(f"{LABEL}.stage={stage}")
    return list(engine.containers.list(all=True, filters={"label": wanted}))


def _started_at(state: dict[str, Any]) -> float | None:
    """State.StartedAt ('2026-12-01T08:22:58.805683375Z', nanoseconds) as a POSIX time; None if never started."""
    text = str(state.get("StartedAt") or "")
    if not text or text.startswith("0001-"):
        return None
    head, _, frac = text.rstrip("Z").partition(".")
    try:
        return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00").timestamp()
    except ValueError:
        return None


def _engine_sockets() -> list[Path]:
    """The Docker engine's socket, as this host names it (never to be mounted into a worker)."""
    found = {Path("/var/run/docker.sock"), Path("/run/docker.sock")}
    host = os.environ.get("DOCKER_HOST", "")
    if host.startswith("unix://"):
        found.add(Path(host.removeprefix("unix://")))
    return sorted({p.resolve() for p in found} | found)


def _tail(data: bytes) -> str:
    return data.decode(errors="replace").strip()[-STDERR_TAIL:]


class DockerExecutor(ProcessExecutor):
    name = "docker"

    def __init__(self, ctx: StageContext) -> None:
        import docker

        self.spec: StageContainer = ctx.work.container  # type: ignore[assignment]  # the spec requires it
        if self.spec is None:
            raise ValueError(f"stage {ctx.stage!r}: executor docker needs a container section")
        self.cwd = Path.cwd()
        super().__init__(ctx)  # calls self.command()
        try:
            self.engine = docker.from_env(max_pool_size=max(10, self.slots + 4), timeout=60)
            info = self.engine.info()
            self.image_attrs = self.engine.images.get(self.spec.image).attrs
        except docker.errors.ImageNotFound:
            raise ValueError(f"stage {ctx.stage!r}: image {self.spec.image!r} is not on the Docker engine "
                             "(build or pull it first)") from None
        except docker.errors.DockerException as exc:
            raise RuntimeError(f"stage {ctx.stage!r}: executor docker cannot reach the Docker engine: {exc}") from exc
        self.nano_cpus = int(min(self.spec.cpus, float(info.get("NCPU") or self.spec.cpus)) * 1e9)
        user = self.spec.run_user
        uid, _, gid = user.partition(":")
        self.uid, self.gid = int(uid), int(gid) if gid else -1
        if self.image_attrs.get("Config", {}).get("Volumes"):
            log.warning("the image declares volumes: the engine mounts them writable in every container", extra={
                "event": "docker.image_volumes", "image": self.spec.image, **self.labels,
                "volumes": sorted(self.image_attrs["Config"]["Volumes"])})
        self.fixed_mounts = self._fixed_mounts()
        self.items_dir = Path(tempfile.mkdtemp(prefix="batchmesh-docker-items-"))  # mode 0700
        self.settled: dict[bytes, tuple[Any, Path]] = {}  # entry -> (its exited container, item file)
        self.settled_lock = threading.Lock()
        self.errors = docker.errors

    # -- the stage's command and mounts ----------------------------------------------------------------------

    def command(self) -> tuple[list[str], dict[str, str]]:
        work, ctx = self.ctx.work, self.ctx
        self.spec_dir: Path | None = ctx.pipeline_path.resolve().parent if ctx.pipeline_path else None
        self.needs_spec_dir = False
        if work.command:
            argv = list(work.command)
            for arg in argv[1:]:
                path = self._host_path(arg)
                if path is not None and self.spec_dir is not None and path.is_relative_to(self.spec_dir):
                    self.needs_spec_dir = True
            return argv, dict(work.env)
        if ctx.pipeline_path is None:
            raise ValueError(f"stage {ctx.stage!r} runs a worker chain or an in-process worker: the docker executor "
                             "needs the pipeline file (pipeline_path) to run services.workers.once in the image")
        self.needs_spec_dir = True
        return ["python", "-m", "services.workers.once", "--pipeline", str(ctx.pipeline_path.resolve()),
                "--stage", ctx.stage], dict(work.env)

    def _host_path(self, arg: str) -> Path | None:
        """The existing host path an argument names (relative: to the working dir), if any."""
        if not arg or arg.startswith("-") or "\0" in arg:
            return None
        try:
            path = (self.cwd / arg).resolve()
            return path if path.exists() else None
        except (OSError, ValueError):
            return None

    def _fixed_mounts(self) -> dict[str, bool]:
        """Host path -> read-only, for every item: the spec's directory when needed and container.mounts."""
        mounts: dict[str, bool] = {}
        if self.needs_spec_dir and self.spec_dir is not None:
            mounts[str(self.spec_dir)] = True
        for raw in self.spec.mounts:
            path = (self.cwd / raw).resolve()
            where = f"stages.{self.ctx.stage}.work.container.mounts: {raw!r} ({path})"
            if not path.exists():
                raise ValueError(f"{where} does not exist")
            if any(sock.is_relative_to(path) for sock in _engine_sockets()) or stat.S_ISSOCK(path.stat().st_mode):
                raise ValueError(f"{where} holds a socket: even read-only, it would let the worker out of its sandbox")
            mounts[str(path)] = True
        covered = [Path(p) for p in mounts]
        for arg in self.argv[1:]:
            path = self._host_path(arg)
            if path is not None and not os.path.isabs(arg) and not any(path.is_relative_to(c) for c in covered):
                log.warning("the command names a host path that is not mounted in the container", extra={
                    "event": "docker.unmounted_path", "path": arg, **self.labels})
        return mounts

    def _input_dir(self, item: WorkItem) -> str | None:
        """The directory of the item's input file, for items a `directory` source listed (their uri comes from
        the source ambassador, which serves files under its root only; a previous stage's result is not trusted
        to choose a host path)."""
        if self.ctx.work.input != "source" or self.ctx.pipeline.source.type != "directory":
            return None
        uri = item.data.get("uri")
        if not isinstance(uri, str) or not uri.startswith("file://"):
            return None
        from urllib.parse import urlparse
        from urllib.request import url2pathname

        parts = urlparse(uri)
        if parts.netloc not in ("", "localhost"):
            return None
        parent = Path(url2pathname(parts.path)).parent
        return str(parent) if parent.is_absolute() and parent != Path("/") and parent.is_dir() else None

    # -- one item -------------------------------------------------------------------------------------------

    def run(self) -> None:
        """Run again after a Redis outage (see Executor._main): outcomes it could not commit keep their
        containers, which the reclaimed entries adopt."""
        self.items_dir.mkdir(mode=0o700, exist_ok=True)
        self.removals: queue.SimpleQueue[tuple[Any, Path] | None] = queue.SimpleQueue()
        remover = threading.Thread(target=self._remove_loop, name=f"bm-docker-rm-{self.ctx.stage}", daemon=True)
        remover.start()
        try:
            self.sweep()
            super().run()
        finally:
            # The loop waited for every item it started and committed what finished. An outcome it could not
            # commit (Redis gone) keeps its container: a restarted manager adopts it and takes the result.
            self.removals.put(None)
            remover.join()
            with self.settled_lock:
                if not self.settled:
                    shutil.rmtree(self.items_dir, ignore_errors=True)

    def stop(self, timeout: float | None = None) -> None:
        super().stop(timeout)
        if self._thread is None or not self._thread.is_alive():
            self.engine.close()

    def execute(self, delivery: Delivery) -> Outcome:
        item = delivery.item
        assert item is not None
        name = container_name(self.ctx.pipeline.name, self.ctx.stage, delivery)
        out = self.ctx.out_dir / item.dirname
        item_file = self.items_dir / f"{name}.json"
        container = None
        try:
            container, adopted = self._create_or_adopt(name, delivery, out, item_file)
            outcome = self._wait(container, out, adopted)
        except BaseException:
            if container is not None:  # an engine error: the attempt fails now, nothing is left to adopt
                self._remove(container, item_file)
            else:
                item_file.unlink(missing_ok=True)
            raise
        with self.settled_lock:  # removed once its outcome is committed: see commit()
            self.settled[delivery.entry_id] = (container, item_file)
        return outcome

    def commit(self, commit: Commit) -> None:
        """Commit, then remove the containers of the committed items. Until then a crash leaves each container
        for the restarted manager to adopt: an item that ran to the end is never run a second time."""
        super().commit(commit)
        entries = [*commit.acks, *(d.entry_id for d, _ in commit.retries), *(d.entry_id for d, _ in commit.dead)]
        with self.settled_lock:
            done = [self.settled.pop(e) for e in entries if e in self.settled]
        for pair in done:
            self.removals.put(pair)

    def _remove_loop(self) -> None:
        while (pair := self.removals.get()) is not None:
            self._remove(*pair)

    def _remove(self, container: Any, item_file: Path) -> None:
        try:
            container.remove(force=True, v=True)
        except self.errors.NotFound:
            pass
        except Exception as exc:  # engine errors, a lost socket: the sweep at the next start removes it
            log.warning("cannot remove a container", extra={"event": "docker.remove_failed",
                                                           "container": container.name, "reason": str(exc)[:300]})
        item_file.unlink(missing_ok=True)

    def _create_or_adopt(self, name: str, delivery: Delivery, out: Path, item_file: Path) -> tuple[Any, bool]:
        for _ in range(2):
            try:
                container = self._create(name, delivery, out, item_file)
            except self.errors.APIError as exc:
                if exc.status_code != 409:
                    raise
                container = self.engine.containers.get(name)  # made before a crash, by us or another manager
                log.info("adopting the container of an earlier delivery", extra={
                    "event": "docker.adopt", "container": name, "status": container.status, **self.labels,
                    "item": delivery.item.id if delivery.item else None})
                if container.status != "created":
                    return container, True
            try:
                container.start()  # a fresh container, or one a crashed manager made but never started
                return container, False
            except self.errors.APIError:
                container.remove(force=True, v=True)  # e.g. its item file went with the crashed manager
        raise RuntimeError(f"container {name} could not be started")

    def _create(self, name: str, delivery: Delivery, out: Path, item_file: Path) -> Any:
        from docker.types import Mount

        item = delivery.item
        assert item is not None
        out.mkdir(parents=True, exist_ok=True)
        self._write_item(item_file, item)
        mounts = {str(out.resolve()): False}
        if (input_dir := self._input_dir(item)) is not None:
            mounts.setdefault(input_dir, True)
        for path, read_only in self.fixed_mounts.items():
            mounts.setdefault(path, read_only)
        binds = [Mount(ITEM_PATH, str(item_file), type="bind", read_only=True)]
        binds += [Mount(path, path, type="bind", read_only=ro) for path, ro in mounts.items()]
        spec = self.spec
        container = self.engine.containers.create(
            spec.image, entrypoint=self.argv[:1], command=self.argv[1:], name=name, detach=True,
            labels=labels_of(self.ctx.pipeline.name, self.ctx.stage, delivery),
            environment={**self.env, "WORK_ITEM_FILE": ITEM_PATH, "WORK_OUTPUT_DIR": str(out.resolve())},
            working_dir=str(self.cwd), user=spec.run_user, mounts=binds,
            network_mode="bridge" if spec.network else "none", read_only=True,
            tmpfs={"/tmp": f"size={spec.tmp},mode=1777,nosuid,nodev"},
            cap_drop=["ALL"], security_opt=["no-new-privileges"], mem_limit=spec.memory,
            memswap_limit=spec.memory, nano_cpus=self.nano_cpus, pids_limit=spec.pids,
            healthcheck={"test": ["NONE"]}, stdin_open=False, tty=False,
        )
        (out / "result.json").unlink(missing_ok=True)  # an earlier attempt's result must not count; not started yet
        self._own(out)
        return container

    def _write_item(self, path: Path, item: WorkItem) -> None:
        """The item document, readable by the container's user only (the directory is private to us)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(item_document(item))
        self._own(path, mode=0o644)

    def _own(self, path: Path, mode: int = 0o777) -> None:
        """Make `path` the container user's: chown when we are root; else, for another uid than ours, open it up
        (`mode`), since we cannot give it away."""
        if os.getuid() == 0:
            os.chown(path, self.uid, self.gid)
        elif self.uid != os.getuid():
            path.chmod(mode)

    def _wait(self, container: Any, out: Path, adopted: bool) -> Outcome:
        import requests

        timeout = self.ctx.work.timeout
        container.reload()
        started = _started_at(container.attrs.get("State", {})) or time.time()
        remaining = timeout - max(0.0, time.time() - started) if adopted else timeout
        timed_out = False
        try:
            container.wait(timeout=max(remaining, 0.05))
        except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
            timed_out = True
            try:
                container.kill()
            except self.errors.APIError:
                pass  # it exited in the meantime
            container.wait(timeout=30)
        container.reload()
        state = container.attrs.get("State", {})
        code = int(state.get("ExitCode", -1))
        stderr = _tail(container.logs(stdout=False, stderr=True, tail=STDERR_LINES))
        if timed_out:
            return Outcome(False, reason=f"timeout after {timeout:g}s" + (f": {stderr}" if stderr else ""))
        if state.get("OOMKilled") and code != 0:
            return Outcome(False, reason=f"OOM killed (memory limit {self.spec.memory // 1024**2}m)"
                                         + (f": {stderr}" if stderr else ""))
        if code != 0:
            return Outcome(False, reason=f"exit code {code}: {stderr}" if stderr else f"exit code {code}")
        return Outcome(True, result=read_result(container.logs(stdout=True, stderr=False), out))

    # -- leftovers ------------------------------------------------------------------------------------------

    def sweep(self) -> None:
        """Remove this stage's containers whose stream entry is no longer pending: their item was committed (or
        dead-lettered) and only the removal was lost to a crash. Pending ones stay, to be adopted."""
        ctx = self.ctx
        stream = Keys(ctx.pipeline.name).stream(ctx.work.input)
        for container in project_containers(self.engine, ctx.pipeline.name, ctx.stage):
            entry = container.labels.get(f"{LABEL}.entry", "")
            try:
                pending = bool(entry) and bool(ctx.client.xpending_range(stream, ctx.stage, min=entry, max=entry,
                                                                         count=1))
            except RedisError as exc:  # no group yet, a bad label: leave it alone
                log.debug("leftover check failed", extra={"event": "docker.leftover_unknown",
                                                          "container": container.name, "reason": str(exc)})
                continue
            if not pending:
                log.info("removing a leftover container", extra={"event": "docker.leftover",
                                                                  "container": container.name, **self.labels})
                try:
                    container.remove(force=True, v=True)
                except self.errors.NotFound:
                    pass
