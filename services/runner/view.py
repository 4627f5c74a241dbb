"""What `batchmesh run` shows on stderr: a progress bar per stage while it runs, a summary table at the end."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

# The summary's item states; "failed" items failed their last attempt and wait for a retry (attempts that failed,
# retried or not, are the bar's "failed attempts").
STATE_LABELS = {"failed": "failed (awaiting a retry)"}


def filter_notes(status: dict[str, Any], baseline: dict[str, dict[str, int]]) -> list[str]:
    """A filter that dropped every item it saw in this run says so (a predicate that is null for every item,
    like `!data.secret`, read by JMESPath as `(!data).secret`, drops everything silently otherwise)."""
    notes = []
    for name, now in status["stages"].items():
        if now.get("kind") != "filter":
            continue
        before = baseline.get(name, {})
        kept = int(now.get("out", 0) or 0) - int(before.get("out", 0) or 0)
        dropped = int(now.get("filtered", 0) or 0) - int(before.get("filtered", 0) or 0)
        if dropped and not kept:
            notes.append(f"filter {name!r} dropped every item ({dropped} of {dropped}): check its `where` "
                         "(`batchmesh validate` samples it)")
    return notes


class RunView:
    def __init__(self, stages: list[str], quiet: bool = False) -> None:
        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=self.console, disable=quiet,
        )
        self.tasks = {name: self.progress.add_task(name, total=None, detail="") for name in stages}

    def __enter__(self) -> RunView:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, status: dict[str, Any], baseline: dict[str, dict[str, int]]) -> None:
        """Per stage: done = items it finished in this run (passed on, dropped by a filter, dead-lettered) out of
        its total: the batch's new items for a stage reading the source, else what reached it so far (done +
        backlog: a shard's share, a filter's kept items downstream). `failed attempts`: each one
        retried, or dead-lettered at the last; the summary's "failed" items are those awaiting a retry."""
        new = int(status["batch"].get("new", 0) or 0)  # dispatched in this batch; done ones are skipped
        for name, task in self.tasks.items():
            now, before = status["stages"].get(name, {}), baseline.get(name, {})

            def delta(key: str, now: dict[str, Any] = now, before: dict[str, Any] = before) -> int:
                return int(now.get(key, 0) or 0) - int(before.get(key, 0) or 0)

            done = delta("out") + delta("dead") + delta("filtered")
            from_source = "source" in (now.get("inputs") or [])
            total = new if from_source else done + int(now.get("backlog", 0) or 0)
            parts = [f"kept {delta('out')} dropped {delta('filtered')}"] if now.get("kind") == "filter" else []
            parts += [f"failed attempts {delta('failed')}", f"dead {delta('dead')}", f"backlog {now.get('backlog', 0)}"]
            self.progress.update(task, completed=done, total=max(total, done) or None, detail="  ".join(parts))

    def summary(self, status: dict[str, Any], dead: list[dict[str, Any]], out_dir: str, *, older: int = 0) -> None:
        """`dead`: the dead letters of this run; `older`: how many from earlier runs remain."""
        table = Table(title=f"pipeline {status['pipeline']}", title_justify="left")
        for column in ("state", "items"):
            table.add_column(column, justify="right" if column == "items" else "left")
        for state, n in status["counts"].items():
            table.add_row(STATE_LABELS.get(state, state), str(n))
        self.console.print(table)
        if dead:
            errors = Table(title="dead-lettered", title_justify="left")
            for column in ("stage", "item", "reason"):
                errors.add_column(column, overflow="fold")
            for letter in dead[:20]:
                errors.add_row(escape(letter["stage"]), escape(str(letter["item"])), escape(letter["reason"][-200:]))
            self.console.print(errors)
            self.console.print(f"{len(dead)} dead-lettered in this run: `batchmesh dlq list` / `batchmesh dlq replay`")
        if older:
            self.console.print(f"{older} older dead letter(s) remain: `batchmesh dlq list`")
        batch = status["batch"]
        self.console.print(f"{batch['listed']} listed, {batch['known']} already done, {batch['new']} new")
        self._source_skipped(status["batch"])
        self.console.print(f"results: {escape(out_dir)}")

    def _source_skipped(self, batch: dict[str, Any]) -> None:
        """Records the source could not serve (a file name that is not UTF-8, a malformed JSONL line)."""
        count, records = int(batch.get("source_skipped", 0) or 0), batch.get("source_skipped_records") or []
        if not count:
            return
        table = Table(title="skipped by the source (not processed)", title_justify="left")
        for column in ("record", "reason"):
            table.add_column(column, overflow="fold")
        for record in records[:20]:
            table.add_row(escape(str(record.get("record"))), escape(f"{record.get('reason')}: {record.get('detail')}"))
        self.console.print(table)
        self.console.print(f"{count} source record(s) skipped: fix or remove them, then run again")
