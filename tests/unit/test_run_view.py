"""What `batchmesh run` shows: names exactly as they are (rich markup escaped), a sensible total for stages that
see a share of the batch (shards, after a filter), "failed" with one meaning, a filter that dropped everything."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

from services.runner.view import RunView, filter_notes


def snapshot(stages: dict[str, dict[str, Any]], new: int = 10) -> dict[str, Any]:
    return {"pipeline": "demo", "batch": {"new": new, "listed": new, "known": 0},
            "counts": {"listed": new, "done": new, "failed": 0, "dead": 1}, "stages": stages}


def recorded(view: RunView) -> RunView:
    view.console = Console(file=io.StringIO(), width=200, color_system=None)
    return view


def test_names_are_shown_exactly() -> None:
    view = recorded(RunView([], quiet=True))
    dead = [{"stage": "work", "item": "star*[x].txt", "reason": "exit code 1: [bold]no[/bold]"}]
    view.summary(snapshot({}), dead, "out")
    text = view.console.file.getvalue()
    assert "star*[x].txt" in text and "[bold]no[/bold]" in text
    assert "failed (awaiting a retry)" in text  # the state, not the bar's failed attempts


def test_totals_for_shards_filters_and_their_downstream() -> None:
    view = RunView(["files", "keep", "map-0", "map-1"], quiet=True)
    stages = {
        "files": {"kind": "shard", "inputs": ["source"], "out": 10, "backlog": 0},
        "keep": {"kind": "filter", "inputs": ["files.0"], "out": 3, "filtered": 3, "backlog": 0},
        "map-0": {"kind": "work", "inputs": ["keep"], "out": 2, "failed": 1, "dead": 0, "backlog": 1},
        "map-1": {"kind": "work", "inputs": ["files.1"], "out": 4, "dead": 0, "backlog": 0},
    }
    view.update(snapshot(stages), {})
    tasks = {view.progress.tasks[i].description: view.progress.tasks[i] for i in view.tasks.values()}
    assert (tasks["files"].completed, tasks["files"].total) == (10, 10)
    assert (tasks["keep"].completed, tasks["keep"].total) == (6, 6)  # kept + dropped of its share
    assert "kept 3 dropped 3" in tasks["keep"].fields["detail"]
    assert (tasks["map-0"].completed, tasks["map-0"].total) == (2, 3)  # what reached it, not the batch's 10
    assert "failed attempts 1" in tasks["map-0"].fields["detail"]
    assert (tasks["map-1"].completed, tasks["map-1"].total) == (4, 4)


def test_a_filter_that_dropped_everything_says_so() -> None:
    status = snapshot({"keep": {"kind": "filter", "out": 0, "filtered": 7},
                       "some": {"kind": "filter", "out": 1, "filtered": 7}})
    assert filter_notes(status, {}) == ["filter 'keep' dropped every item (7 of 7): check its `where` "
                                        "(`batchmesh validate` samples it)"]
    assert filter_notes(status, {"keep": {"filtered": 7}}) == []  # nothing dropped in this run
