"""`batchmesh …`: parses arguments and calls the library. Exit codes: 0 done, 1 items dead-lettered in this run or
skipped by the source, a role failed, or Redis unreachable, 2 bad usage, a bad pipeline spec (every error, one
line each) or bad Redis settings, 3 `run --timeout` passed before the batch was done, 130 Ctrl-C, 143 SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import redis

from services.core import lifeline, strict_json
from services.core.logs import setup_logging
from services.core.masking import SecretFileError
from services.core.settings import Settings
from services.core.spec import Pipeline, SpecError, load_pipeline

EXIT_FAILED, EXIT_USAGE = 1, 2


def _load(path: str, input_path: str | None = None) -> Pipeline:
    overrides = {"source.path": str(Path(input_path).resolve())} if input_path else None
    return load_pipeline(path, overrides)


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a bad value exits 2 with argparse's message)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _stop_on_signals() -> threading.Event:
    """SIGTERM/SIGINT set an event: roles finish their current batch, commit and return."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _settings(pipeline: Pipeline, **extra: Any) -> Settings:
    return Settings(pipeline=pipeline.name, **extra)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("batchmesh")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown"


def _preflight(pipeline: Pipeline, input_given: bool, require_source: bool = False) -> None:
    """What the spec names must exist here (source, plugin files, commands): every problem on stderr, one line
    each, then exit 2; warnings (a predicate that is not boolean on sampled items...) on stderr too."""
    from services.runner.preflight import check

    found = check(pipeline, input_given=input_given, require_source=require_source or input_given)
    for where, why in found.warnings:
        print(f"batchmesh: warning: {where}: {why}", file=sys.stderr)
    for where, why in found.errors:
        print(f"batchmesh: {where}: {why}", file=sys.stderr)
    if found.errors:
        raise SystemExit(EXIT_USAGE)


def cmd_validate(args: argparse.Namespace) -> int:
    pipeline = _load(args.pipeline, args.input)
    _preflight(pipeline, input_given=bool(args.input))
    stages = ", ".join(f"{name} ({stage.kind})" for name, stage in pipeline.stages.items())
    print(f"{args.pipeline}: valid pipeline {pipeline.name!r}: {stages}")
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM stops a run the way Ctrl-C does, but exits 143 (128 + SIGTERM), not 130."""


def _interrupt(*_: Any) -> None:
    raise Terminated


def cmd_run(args: argparse.Namespace) -> int:
    from services.runner import run_pipeline
    from services.runner.run import StartupFailed

    pipeline = _load(args.pipeline, args.input)
    _preflight(pipeline, input_given=bool(args.input), require_source=True)  # a missing input: one line, exit 2
    signal.signal(signal.SIGTERM, _interrupt)  # like Ctrl-C: the run stops every role it started before it exits
    tail = None
    if args.verbose:  # the roles' logs live: a worker's stderr (kept even when it succeeds), role events
        from services.runner.tail import LogTail

        tail = LogTail(Settings(pipeline=pipeline.name).data_dir / "logs" / pipeline.name).start()
    try:
        return run_pipeline(pipeline, Path(args.pipeline), Path(args.out), timeout=args.timeout,
                            input_path=args.input, quiet=args.quiet, watch=args.watch)
    except StartupFailed as exc:  # one line, never a traceback: which role, its exit code and last log line
        print(f"batchmesh: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if tail is not None:
            tail.stop()


def cmd_status(args: argparse.Namespace) -> int:
    from services.runner import pipeline_status

    pipeline = _load(args.pipeline)
    print(strict_json.dumps(pipeline_status(pipeline, Settings(pipeline=pipeline.name)), indent=2, ensure_ascii=True))
    return 0


def cmd_dlq(args: argparse.Namespace) -> int:
    from services.runner import dlq_list, dlq_replay

    pipeline = _load(args.pipeline)
    if args.stage is not None and args.stage not in pipeline.stages:
        raise SpecError("--stage", f"no stage {args.stage!r} in {args.pipeline} (stages: {', '.join(pipeline.stages)})")
    settings = Settings(pipeline=pipeline.name)
    if args.action == "list":
        letters = dlq_list(pipeline, settings, args.stage)
        for letter in letters:
            print(strict_json.dumps(letter, ensure_ascii=True, separators=(", ", ": ")))
        if not letters:  # said on stderr: stdout stays JSON lines only (empty), for scripts
            where = f" at stage {args.stage}" if args.stage else ""
            print(f"no dead letters in pipeline {pipeline.name}{where}", file=sys.stderr)
        return 0
    moved, lines = dlq_replay(pipeline, settings, args.stage, args.id or None)
    for line in lines:
        print(line, file=sys.stderr)
    print(f"replayed {moved} item(s); run the pipeline (or let its workers run) to process them", file=sys.stderr)
    return 0


def cmd_reset(args: argparse.Namespace) -> int:
    """Delete every key of the pipeline (its progress, versions, results, dead letters, barrier state): the next
    run processes everything anew. Output files are left alone."""
    from services.core import Keys
    from services.runner.lifecycle import alive_roles, pipeline_keys, reset
    from services.runner.run import connect

    pipeline = _load(args.pipeline)
    settings = Settings(pipeline=pipeline.name)
    with connect(settings) as client:
        keys = Keys(pipeline.name)
        alive = alive_roles(client, pipeline, settings)
        if alive and not args.force:
            roles = ", ".join(f"{stage} ({n})" for stage, n in alive.items())
            print(f"batchmesh reset: pipeline {pipeline.name!r} is in use: live consumers at {roles}; stop the run "
                  f"first (or --force)", file=sys.stderr)
            return 1
        found = sum(1 for _ in pipeline_keys(client, keys))
        if not args.yes:
            if not sys.stdin.isatty():
                print(f"batchmesh reset: would delete {found} key(s) of pipeline {pipeline.name!r}; stdin is not a "
                      f"terminal: confirm with --yes", file=sys.stderr)
                return EXIT_USAGE
            answer = input(f"delete {found} key(s) of pipeline {pipeline.name!r} (progress, results, dead letters)? "
                           f"[y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("batchmesh reset: nothing deleted", file=sys.stderr)
                return 1
        removed = reset(client, keys)
    print(f"reset pipeline {pipeline.name!r}: {removed} key(s) removed; the next run processes every item anew",
          file=sys.stderr)
    return 0


def cmd_source(args: argparse.Namespace) -> int:
    from services.source.server import build_backend, serve

    pipeline = _load(args.pipeline, args.input)
    src = pipeline.source
    backend = build_backend(src.type, path=src.path, glob=src.glob, filter=src.filter)
    serve(backend, host=args.host, port=args.port, pipeline=pipeline.name)
    return 0


def cmd_manager(args: argparse.Namespace) -> int:
    from services.manager import run_manager

    pipeline = _load(args.pipeline)
    settings = _settings(pipeline)
    run_manager(pipeline, settings, args.source_url, _stop_on_signals(), port=args.port, once=args.once,
                pipeline_path=Path(args.pipeline), host=args.host)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from services.core.metrics import serve_metrics
    from services.workers import run_worker

    pipeline = _load(args.pipeline)
    if args.stage not in pipeline.stages:
        raise SpecError("--stage", f"no stage {args.stage!r} in {args.pipeline} (stages: {', '.join(pipeline.stages)})")
    settings = _settings(pipeline, **({"out_dir": Path(args.out)} if args.out else {}))
    serve_metrics(args.metrics_port or settings.metrics_port)
    run_worker(pipeline, args.stage, settings, _stop_on_signals(), max_items=args.max_items,
               idle_exit_s=args.idle_exit)
    return 0


def cmd_autoscaler(args: argparse.Namespace) -> int:
    from services.autoscaler import run_autoscaler

    pipeline = _load(args.pipeline)
    run_autoscaler(pipeline, _settings(pipeline), _stop_on_signals(), project=args.project, interval_s=args.interval)
    return 0


def cmd_router(args: argparse.Namespace) -> int:
    from services.core.metrics import serve_metrics
    from services.core.progress import DONE
    from services.router import run_barrier, run_router

    pipeline = _load(args.pipeline)
    routers = pipeline.router_stages()
    if args.stage not in routers:
        raise SpecError("--stage", f"no router stage {args.stage!r} in {args.pipeline} (routers: {', '.join(routers)})")
    settings = _settings(pipeline, **({"out_dir": Path(args.out)} if args.out else {}))
    serve_metrics(args.metrics_port or settings.metrics_port)
    if args.stage in pipeline.barrier_stages():
        run_barrier(pipeline, args.stage, settings, _stop_on_signals())
        return 0
    # An item a filter drops is finished: it counts as done, so the batch can complete; a barrier after it counts
    # it as skipped (core.spec_skips), like an item sent down a branch that does not lead to that barrier.
    from services.core.spec_skips import skip_plan

    run_router(pipeline.name, args.stage, routers[args.stage], settings, _stop_on_signals(), drop_state=DONE,
               skips=skip_plan(pipeline, args.stage))
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from services.core.probe import probe

    ok, detail = probe(args.url)
    print(detail.strip(), file=sys.stderr)
    return 0 if ok else 1


def cmd_render_compose(args: argparse.Namespace) -> int:
    from services.render import __main__ as render_all
    from services.render.compose_files import cli

    if args.all:
        return render_all.main()
    if not args.pipeline:
        print("batchmesh render compose: give a PIPELINE or --all", file=sys.stderr)
        return EXIT_USAGE
    return cli(args.pipeline, args.output)


def cmd_render_k8s(args: argparse.Namespace) -> int:
    from services.render.k8s import cli

    return cli(args.pipeline, args.output)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="batchmesh", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"batchmesh {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a whole pipeline locally, each role its own process")
    p.add_argument("pipeline")
    p.add_argument("--input", help="replaces the source's path")
    p.add_argument("--out", default="out", help="where results go (default: out)")
    p.add_argument("--timeout", type=float, default=0, help="give up after this many seconds (0 = never)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show the roles' logs live: workers' stderr (also of items that succeed), role events")
    p.add_argument("--watch", action="store_true",
                   help="keep running: the next batches as the pipeline's schedule starts them (Ctrl-C ends)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="check a pipeline spec; exit 2 with every bad field's path if invalid")
    p.add_argument("pipeline")
    p.add_argument("--input", help="check this source path (replaces the source's path) and sample its items")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("status", help="progress of a pipeline as JSON")
    p.add_argument("pipeline")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("dlq", help="dead letters: list or replay")
    p.add_argument("action", choices=["list", "replay"])
    p.add_argument("pipeline")
    p.add_argument("--stage", help="only this stage (default: every stage)")
    p.add_argument("--id", action="append", help="replay only this dead-letter entry id (repeatable)")
    p.set_defaults(func=cmd_dlq)

    p = sub.add_parser("reset", help="delete a pipeline's state in Redis (progress, results, dead letters): the "
                                     "next run starts over")
    p.add_argument("pipeline")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask (scripts); without it a non-terminal "
                                                            "stdin is refused (exit 2)")
    p.add_argument("--force", action="store_true", help="even while consumers of the pipeline are alive")
    p.set_defaults(func=cmd_reset)

    p = sub.add_parser("source", help="role: the source ambassador (REST API v1)")
    p.add_argument("--pipeline", required=True)
    p.add_argument("--input")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.set_defaults(func=cmd_source)

    p = sub.add_parser("manager", help="role: the work-queue manager")
    p.add_argument("--pipeline", required=True)
    p.add_argument("--source-url", required=True)
    p.add_argument("--host", default="127.0.0.1", help="address of the status API (0.0.0.0 in a container)")
    p.add_argument("--port", type=int, default=0, help="status API and /metrics (0 = none)")
    p.add_argument("--once", action="store_true", help="list and dispatch once, then exit")
    p.set_defaults(func=cmd_manager)

    p = sub.add_parser("router", help="role: a router (copy, filter, split, shard, merge) or barrier (join, reduce)")
    p.add_argument("--pipeline", required=True)
    p.add_argument("--stage", required=True)
    p.add_argument("--out", help="where a reduce writes its aggregate file")
    p.add_argument("--metrics-port", type=int, default=0)
    p.set_defaults(func=cmd_router)

    p = sub.add_parser("worker", help="role: a worker replica of one stage")
    p.add_argument("--pipeline", required=True)
    p.add_argument("--stage", required=True)
    p.add_argument("--out", help="root of the items' WORK_OUTPUT_DIRs")
    p.add_argument("--metrics-port", type=int, default=0)
    p.add_argument("--max-items", type=_positive_int, default=None, metavar="N",
                   help="exit 0 after N entries are committed (a Job's pod: KEDA ScaledJob); default: run on")
    p.add_argument("--idle-exit", type=_non_negative, default=0.0, metavar="SECONDS",
                   help="exit 0 after SECONDS with nothing to read (with --max-items: another pod took it)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("autoscaler", help="role: scale each work stage's worker-<stage> compose containers to the "
                                          "manager's autoscaler decision (docker SDK)")
    p.add_argument("--pipeline", required=True)
    p.add_argument("--project", help="compose project (default: the project of the container this runs in)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between decisions read (default: 2)")
    p.set_defaults(func=cmd_autoscaler)

    p = sub.add_parser("probe", help="health check: GET URL, exit 0 on HTTP 200 else 1 (a container HEALTHCHECK)")
    p.add_argument("url", nargs="?", help="default: http://127.0.0.1:$BATCHMESH_METRICS_PORT/healthz (port 9400)")
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("render", help="render a pipeline for a deployment target")
    render = p.add_subparsers(dest="target", required=True)
    p = render.add_parser("compose", help="a Compose file (services, Prometheus, Grafana) for a pipeline spec")
    p.add_argument("pipeline", nargs="?", help="pipeline.yaml, anywhere (its directory is mounted read-only "
                   "into the roles)")
    p.add_argument("-o", "--output", help="write here, with the Prometheus and Grafana files it mounts beside it "
                   "(default: stdout)")
    p.add_argument("--all", action="store_true", help="regenerate every committed file under compose/")
    p.set_defaults(func=cmd_render_compose)
    p = render.add_parser("k8s", help="kustomize dirs (base, KEDA and HPA overlays) for a pipeline spec")
    p.add_argument("pipeline", help="pipeline.yaml (its directory becomes the roles' ConfigMap)")
    p.add_argument("-o", "--output", help="write k8s/-style dirs under this directory (default: one YAML stream)")
    p.set_defaults(func=cmd_render_k8s)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(Settings().log_level, Settings().log_json)
    lifeline.guard()  # a role of `batchmesh run` dies with it (and kills its commands), even if it is SIGKILLed
    try:
        return int(args.func(args) or 0)
    except SpecError as exc:
        print(f"batchmesh: invalid pipeline: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SecretFileError as exc:  # a secret's file setting that cannot be read: bad configuration
        print(f"batchmesh: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except redis.RedisError as exc:  # a Redis state is never a traceback: one line, what is wrong, what to do
        from services.core.redis_errors import explain

        settings = Settings()
        message, code = explain(exc, settings.redis_url, settings.data_dir.resolve() / "redis")
        print(f"batchmesh: {message}", file=sys.stderr)
        return code
    except Terminated:
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
