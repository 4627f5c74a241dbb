"""The multi-worker: adapters applied in sequence to one item in one process.

Data flow, kept deliberately simple: adapter i+1 gets the same item (id, version, batch, attempt) with `data` =
adapter i's result — not merged with the previous data, so each adapter's output is exactly the next one's input
(an adapter that wants to pass something on includes it in its result). Each adapter writes its files to its own
subdirectory `<item dir>/<index>-<name>/`; a chain of one uses `<item dir>` itself. A failing adapter fails the
whole item, the reason prefixed by `chain[<index>] <name>:`. The chain's result is the last adapter's."""

from __future__ import annotations

import re
from pathlib import Path

from services.core.command import Outcome, failure_reason
from services.core.item import WorkItem
from services.core.spec import SpecError, WorkSpec

from .adapters import Adapter, CommandAdapter, FunctionAdapter
from .registry import load_plugins, resolve


class Chain:
    def __init__(self, adapters: list[Adapter]) -> None:
        if not adapters:
            raise ValueError("a chain needs at least one adapter")
        self.adapters = adapters
        self.has_commands = any(a.is_command for a in adapters)
        self.has_functions = not all(a.is_command for a in adapters)  # in-process: timed by workers.watchdog
        self._dirs = [f"{i}-{_safe(a.name)}" for i, a in enumerate(adapters)]
        # A chain of one function: the worker runs it in a batch loop of its own (workers.runtime), same outcomes.
        self.function = adapters[0] if len(adapters) == 1 and isinstance(adapters[0], FunctionAdapter) else None

    def __len__(self) -> int:
        return len(self.adapters)

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.adapters]

    def run(self, item: WorkItem, output_dir: Path) -> Outcome:
        if len(self.adapters) == 1:  # the hot path: no copies, no subdirectory
            return _guarded(self.adapters[0], item, output_dir)
        outcome = Outcome(False, reason="empty chain")
        for i, adapter in enumerate(self.adapters):
            outcome = _guarded(adapter, item, output_dir / self._dirs[i])
            if not outcome.ok:
                return Outcome(False, reason=f"chain[{i}] {adapter.name}: {outcome.reason}")
            item = item.model_copy(update={"data": outcome.result or {}})
        return outcome


def build_chain(work: WorkSpec, stage: str, plugins: list[str] | None = None) -> Chain:
    """The stage's adapters, after importing the pipeline's `plugins` (modules registering workers). An unknown
    worker name or a plugin that does not import is a spec error, raised before any item is read."""
    try:
        load_plugins(plugins or [])
    except (ImportError, LookupError, SyntaxError) as exc:
        raise SpecError("plugins", f"cannot load: {exc}") from None
    adapters: list[Adapter] = []
    for i, ref in enumerate(work.adapters):
        if ref.command is not None:
            adapters.append(CommandAdapter(ref.command, {**work.env, **ref.env}, work.timeout))
            continue
        assert ref.worker is not None
        where = f"stages.{stage}.work.chain.{i}.worker" if work.chain else f"stages.{stage}.work.worker"
        try:
            adapters.append(FunctionAdapter(resolve(ref.worker), ref.worker))
        except LookupError as exc:
            raise SpecError(where, str(exc)) from None
    return Chain(adapters)


def _guarded(adapter: Adapter, item: WorkItem, output_dir: Path) -> Outcome:
    """Adapters report failures as outcomes; anything they raise anyway (a full disk, say) fails the item only."""
    try:
        return adapter.run(item, output_dir)
    except Exception as exc:
        return Outcome(False, reason=failure_reason(exc))


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:60].lstrip(".") or "adapter"
