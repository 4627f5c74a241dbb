"""One worker adapter interface, two implementations: a command (core's `run_command`, the worker contract) and an
in-process function (same semantics, no process per item)."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from services.core.command import Outcome, failure_reason, run_command
from services.core.item import WorkItem

from .registry import WorkerFn, writes_files

_INTERPRETERS = re.compile(r"^(python[\d.]*|pypy[\d.]*|sh|bash|node|ruby|perl|Rscript|java)$")


def document(item: WorkItem) -> dict[str, Any]:
    """The item as a function sees it: the same document a command reads from WORK_ITEM_FILE
    (core.command.item_document), built directly instead of encoded and parsed again, for speed."""
    return {"id": item.id, "name": item.id, "data": item.data, "version": item.version, "batch": item.batch,
            "attempt": item.attempts + 1}


def as_result(value: Any) -> dict[str, Any]:
    """A function's return value as a result, like a command's stdout: None = {}, a non-dict = {"result": value}."""
    if value is None:
        return {}
    return value if isinstance(value, dict) else {"result": value}


class Adapter(ABC):
    """Runs one item. Never raises for a failing item: returns Outcome(ok=False, reason=...)."""

    name: str

    @abstractmethod
    def run(self, item: WorkItem, output_dir: Path) -> Outcome: ...

    @property
    def is_command(self) -> bool:
        return False


class CommandAdapter(Adapter):
    def __init__(self, argv: list[str], env: dict[str, str] | None = None, timeout: float = 300.0) -> None:
        self.argv, self.env, self.timeout = list(argv), dict(env or {}), timeout
        self.name = command_name(self.argv)

    def run(self, item: WorkItem, output_dir: Path) -> Outcome:
        return run_command(self.argv, item, output_dir, timeout=self.timeout, env=self.env)

    @property
    def is_command(self) -> bool:
        return True


class FunctionAdapter(Adapter):
    def __init__(self, fn: WorkerFn, name: str | None = None) -> None:
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "function")
        self.writes = writes_files(fn)

    def call(self, item: WorkItem, output_dir: Path) -> dict[str, Any]:
        """The function's result for `item` (`as_result`); raises whatever the function (or the mkdir) raises."""
        if self.writes:
            output_dir.mkdir(parents=True, exist_ok=True)
        value = self.fn(document(item), output_dir)
        return value if type(value) is dict else as_result(value)  # (a plain dict, the usual: as_result's own)

    def run(self, item: WorkItem, output_dir: Path) -> Outcome:
        try:
            result = self.call(item, output_dir)
        except Exception as exc:  # any exception is the item's failure, never the worker's crash
            return Outcome(False, reason=failure_reason(exc))
        # Not checked for JSON here: whoever encodes the result (the stage's commit, the next command of a chain,
        # the one-shot worker) turns an unencodable one into the item's failure, and the hot path encodes once.
        return Outcome(True, result=result)


def command_name(argv: list[str]) -> str:
    """A short readable name: the program, or the script when the program is an interpreter."""
    program = Path(argv[0]).name
    if _INTERPRETERS.match(program) and len(argv) > 1 and not argv[1].startswith("-"):
        program = Path(argv[1]).name
    return program
