"""Executor plug-ins, registered by name like httpx transports. Built-ins are named by import path and loaded on
first use, so the manager imports rq only when a stage uses it."""

from __future__ import annotations

import importlib

from .base import Executor, StageContext, rq_queue_name, stage_settings

_REGISTRY: dict[str, type[Executor] | str] = {
    "stream": "services.manager.executors.stream:StreamExecutor",
    "process": "services.manager.executors.process:ProcessExecutor",
    "rq": "services.manager.executors.rq:RqExecutor",
    "docker": "services.manager.executors.docker:DockerExecutor",
    "kubernetes": "services.manager.executors.kubernetes:KubernetesExecutor",
}


def register(cls: type[Executor]) -> type[Executor]:
    """Class decorator: make `cls` the executor for `cls.name`."""
    _REGISTRY[cls.name] = cls
    return cls


def executor_class(name: str) -> type[Executor]:
    entry = _REGISTRY.get(name)
    if entry is None:
        raise KeyError(f"no executor {name!r} (known: {', '.join(sorted(_REGISTRY))})")
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = _REGISTRY[name] = getattr(importlib.import_module(module), attr)
    return entry


__all__ = ["Executor", "StageContext", "executor_class", "register", "rq_queue_name", "stage_settings"]
