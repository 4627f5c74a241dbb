"""The roles of a pipeline, their argv and environment: one definition that `batchmesh run` (local processes),
`batchmesh render compose` (services) and later `render k8s` (Deployments) all start, so the three renderings run
the same entry points with the same environment variables (DESIGN.md, "one spec, three renderings").

Every role's argv is what follows `batchmesh` (the console script, the images' ENTRYPOINT), except rq workers,
which run rq's own worker (`rq_argv`, a full argv)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from services.core.spec import Pipeline

MESH_IMAGE = "batchmesh:0.1.0"
WORKER_IMAGE = "batchmesh-worker:0.1.0"
WORKER_DEFAULT_EXTRAS = ("images", "video")  # services/workers/Dockerfile's ARG EXTRAS
METRICS_PORT = 9400  # every router, barrier and worker serves /metrics and /healthz here in a container
SOURCE_PORT = 8080
MANAGER_PORT = 8081

RoleKind = Literal["source", "manager", "router", "worker", "rq"]
SOURCE_TOKEN_ENV = "BATCHMESH_SOURCE_TOKEN"  # noqa: S105 (a variable's name) the source API's bearer token
SOURCE_TOKEN_ROLES = ("source", "manager")  # the source requires it, the manager sends it; nobody else gets it


def role_env(pipeline: Pipeline, redis_url: str, out_dir: str) -> dict[str, str]:
    """The environment every role of `pipeline` gets, locally and in containers."""
    return {
        "REDIS_URL": redis_url,
        "BATCHMESH_PIPELINE": pipeline.name,
        "BATCHMESH_OUT_DIR": out_dir,
        "BATCHMESH_LOG_JSON": "true",
        "BATCHMESH_MAX_DELIVERIES": str(pipeline.defaults.max_deliveries),
        "BATCHMESH_VISIBILITY_TIMEOUT_MS": str(int(pipeline.defaults.visibility_timeout * 1000)),
    }


def source_args(spec: str, *, port: int, host: str = "127.0.0.1", input_path: str | None = None) -> list[str]:
    return ["source", "--pipeline", spec, *(["--input", input_path] if input_path else []),
            "--host", host, "--port", str(port)]


def manager_args(spec: str, source_url: str, *, host: str = "127.0.0.1", port: int = 0) -> list[str]:
    return ["manager", "--pipeline", spec, "--source-url", source_url,
            *(["--host", host, "--port", str(port)] if port else [])]


def router_args(spec: str, stage: str) -> list[str]:
    return ["router", "--pipeline", spec, "--stage", stage]


def worker_args(spec: str, stage: str) -> list[str]:
    return ["worker", "--pipeline", spec, "--stage", stage]


def rq_queue(pipeline: Pipeline, stage: str) -> str:
    return f"batchmesh-{pipeline.name}-{stage}"


def rq_argv(pipeline: Pipeline, stage: str, redis_url: str | None, python: str = "python") -> list[str]:
    """rq's own worker for an rq stage (it runs the jobs the manager enqueues). `redis_url` None: rq reads
    RQ_REDIS_URL from its environment (the local run: no password in a process's argv)."""
    return [python, "-m", "rq.cli", "worker", *(["--url", redis_url] if redis_url else []), "--worker-class",
            "rq.SimpleWorker", "--logging_level", "WARNING", rq_queue(pipeline, stage)]


@dataclass(frozen=True)
class Role:
    """One long-running role: a process locally, a service in compose, a Deployment in k8s."""

    name: str  # source, manager, router-<stage>, worker-<stage>, rq-<stage>
    kind: RoleKind
    argv: list[str]  # after `batchmesh`; rq: the whole argv
    stage: str | None = None
    replicas: int = 1
    heavy: bool = False  # runs worker code: needs the worker image when the spec names extras
    labels: dict[str, str] = field(default_factory=dict)


def roles(pipeline: Pipeline, spec: str, *, source_url: str, redis_url: str, host: str = "127.0.0.1",
          source_port: int = SOURCE_PORT, manager_port: int = 0, input_path: str | None = None) -> list[Role]:
    """Every role of `pipeline` in start order: source, routers and barriers, stream workers, rq workers, manager.
    `process` stages have no role of their own: the manager runs their items (so it is `heavy` then)."""
    work = pipeline.work_stages()
    out = [Role("source", "source", source_args(spec, port=source_port, host=host, input_path=input_path))]
    out += [Role(f"router-{name}", "router", router_args(spec, name), name) for name in pipeline.router_stages()]
    for name, body in work.items():
        replicas = max(body.replicas.min, 1)
        if body.executor == "stream":
            out.append(Role(f"worker-{name}", "worker", worker_args(spec, name), name, replicas, heavy=True))
        elif body.executor == "rq":
            out.append(Role(f"rq-{name}", "rq", rq_argv(pipeline, name, redis_url), name, replicas, heavy=True))
    in_manager = any(body.executor == "process" for body in work.values())
    out.append(Role("manager", "manager", manager_args(spec, source_url, host=host, port=manager_port),
                    heavy=in_manager))
    return out


def worker_image(extras: list[str] | tuple[str, ...]) -> str:
    """The worker image's tag for these extras: the Dockerfile's default set keeps the plain tag, any other set
    gets its own (`batchmesh-worker:0.1.0-images`), so two pipelines never overwrite each other's image."""
    if tuple(sorted(extras)) == WORKER_DEFAULT_EXTRAS:
        return WORKER_IMAGE
    return f"{WORKER_IMAGE}-{'-'.join(sorted(extras))}"
