"""The runnable entry of a router stage: the kind comes from the spec model, the class from the registry."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import redis

from services.core import Settings
from services.core.embedded import redis_url
from services.core.health import RoleHealth
from services.core.reconnect import Reconnect
from services.core.redis_connect import connect
from services.core.spec import Pipeline
from services.core.spec_routers import RouterSpec
from services.core.spec_skips import Skip

from . import copier, filter, merger, sharder, splitter  # noqa: F401 - importing registers the kinds
from .barrier import Barrier, BarrierPlan
from .base import ROUTERS, DropHook, Router
from .join import Join
from .reduce import Reduce

BARRIERS: dict[str, type[Barrier]] = {Join.kind: Join, Reduce.kind: Reduce}


def build_router(client: redis.Redis, settings: Settings, stage: str, spec: RouterSpec, *,
                 server_side: bool | None = None, drop_state: str | None = None,
                 on_drop: DropHook | None = None, consumer: str | None = None, skips: Sequence[Skip] = (),
                 **options: Any) -> Router:
    """A router of the spec's kind; `options` go to that kind (e.g. the sharder's consumer_timeout_ms). `skips`:
    the barriers it records items sent away from them for (core.spec_skips.skip_plan of the pipeline)."""
    try:
        cls = ROUTERS[spec.kind]
    except (KeyError, AttributeError):
        raise ValueError(f"no router kind for {type(spec).__name__} (kinds: {', '.join(sorted(ROUTERS))})") from None
    return cls(client, settings, stage, spec, server_side=server_side, drop_state=drop_state, on_drop=on_drop,
               consumer=consumer, skips=skips, **options)


def run_router(pipeline_name: str, stage: str, spec_model: RouterSpec, settings: Settings, stop: threading.Event,
               *, server_side: bool | None = None, drop_state: str | None = None,
               on_drop: DropHook | None = None, skips: Sequence[Skip] = ()) -> None:
    """Route the stage's items until `stop` is set. `server_side`: None = in Lua when the expression is simple,
    True = in Lua or raise ValueError, False = in Python."""
    settings = settings.model_copy(update={"pipeline": pipeline_name})
    with redis_url(settings.redis_url, settings.data_dir / "redis") as url:
        client = connect(url, settings)
        health = RoleHealth(settings.pipeline, "router", stage)
        try:  # a Redis not up yet (or restarting) is waited for: starting creates the groups, safe to repeat
            router = Reconnect(client, health, stop).call(lambda: build_router(
                client, settings, stage, spec_model, server_side=server_side, drop_state=drop_state,
                on_drop=on_drop, skips=skips))
            if router is not None:
                router.run(stop, health)
        finally:
            client.close()


def build_barrier(client: redis.Redis, settings: Settings, pipeline: Pipeline, stage: str, *,
                  consumer: str | None = None) -> Barrier:
    """The join or reduce of `stage`; it needs the whole graph (which stages' dead letters it stops waiting for)."""
    spec = pipeline.stages[stage].body
    settings = settings.model_copy(update={"pipeline": pipeline.name})
    return BARRIERS[spec.kind](client, settings, stage, spec, BarrierPlan.of(pipeline, stage), consumer=consumer)


def run_barrier(pipeline: Pipeline, stage: str, settings: Settings, stop: threading.Event) -> None:
    settings = settings.model_copy(update={"pipeline": pipeline.name})
    with redis_url(settings.redis_url, settings.data_dir / "redis") as url:
        client = connect(url, settings)
        health = RoleHealth(settings.pipeline, "barrier", stage)
        try:
            barrier = Reconnect(client, health, stop).call(lambda: build_barrier(client, settings, pipeline, stage))
            if barrier is not None:
                barrier.run(stop, health)
        finally:
            client.close()
