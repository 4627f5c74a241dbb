"""Routers before a barrier that send some of a batch's items away from it: a filter's drops, a splitter's routes
and a sharder's shards that do not lead to it. Such a router records each item it sends away in the barrier's
per-batch `skipped` set (Keys.barrier(stage, batch, "skipped")), in the same script call or transaction that routes
it, and the barrier counts a skipped item as accounted for, like one dead-lettered upstream. This module answers,
from the validated graph, which barriers a router must tell about which outputs (`skip_plan`, computed once when the
router starts), and where such a record could not be exact (`skip_problem`, for `validate`).

A barrier here is one that counts the manifest's items (no barrier before it); the reducers of one sharded reduce
are siblings and count as one: an output leading to a sibling is not "away" (the sibling folds those items and the
barrier already stops waiting for what its siblings folded). A record is exact only if the item has no copy that
reaches the barrier by another way — a copier's other branch, or another stage reading the same stream — else the
record could fire the barrier before that copy arrives; those graphs are refused."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .spec import Pipeline

SKIPPING = ("filter", "split", "shard")  # a copier and a merger send every item on every output they have


@dataclass(frozen=True)
class Skip:
    """One barrier a router tells: an item whose outputs are all in `away` (a filter's drop: no output at all) is
    recorded as skipped for it."""

    barrier: str
    away: frozenset[int]  # indexes into the router's outputs from which neither the barrier nor a sibling is reached


def below(pipeline: Pipeline, stream: str) -> set[str]:
    """Every stage an item on `stream` can get to."""
    found: set[str] = set()
    seen: set[str] = set()
    todo = [stream]
    while todo:
        s = todo.pop()
        if s in seen:
            continue
        seen.add(s)
        for reader in pipeline.readers(s):
            found.add(reader)
            todo.extend(pipeline.stages[reader].outputs(reader))
    return found


def _group(pipeline: Pipeline, barrier: str) -> set[str]:
    return {barrier, *pipeline.barrier_siblings(barrier)}


def counting_barriers(pipeline: Pipeline) -> list[str]:
    """The barriers that wait for the manifest's items (not for partials of the barriers before them)."""
    return [name for name in pipeline.barrier_stages() if not pipeline.barrier_sources(name)]


def skip_plan(pipeline: Pipeline, stage: str) -> list[Skip]:
    """What router `stage` records: per barrier it is before (or before a sibling of), the outputs leading away."""
    spec = pipeline.stages[stage]
    if spec.kind not in SKIPPING:
        return []
    outputs = spec.outputs(stage)
    plan = []
    for barrier in counting_barriers(pipeline):
        group = _group(pipeline, barrier)
        if not any(stage in pipeline.upstream(pipeline.stages[g].body.input) for g in group):
            continue
        away = frozenset(i for i, out in enumerate(outputs) if not group & below(pipeline, out))
        if away or spec.kind == "filter":
            plan.append(Skip(barrier, away))
    return plan


def skip_problem(pipeline: Pipeline, barrier: str) -> str | None:
    """Why a router's records for `barrier` could not be exact (a copy of an item it sends away reaches the barrier
    another way), or None."""
    kind = pipeline.stages[barrier].kind
    for router in sorted(pipeline.stages):
        if any(s.barrier == barrier for s in skip_plan(pipeline, router)):
            fork = _copy_around(pipeline, router, _group(pipeline, barrier))
            if fork:
                rk = pipeline.stages[router].kind
                what = "drops" if rk == "filter" else "routes away from it"
                return (f"{rk} stage {router!r} upstream {what} items a copy of which also reaches the {kind} another "
                        f"way ({fork}): the {kind} could fire before that copy arrives; put the {rk} before the copy "
                        f"is made, or after the copies meet again")
    return None


def _copy_around(pipeline: Pipeline, router: str, group: set[str]) -> str | None:
    """Where an item on its way to `router` is copied so that a copy can reach a barrier of `group` without
    passing `router` (or through it a second time), or None."""
    def leads(stage: str, targets: set[str]) -> bool:
        return stage in targets or any(targets & below(pipeline, out) for out in pipeline.stages[stage].outputs(stage))

    (entry,) = pipeline.stages[router].body.inputs
    streams = {entry} | {s for st in pipeline.upstream(entry) for s in pipeline.stages[st].body.inputs}
    for stream in sorted(streams):
        readers = pipeline.readers(stream)
        for a in (r for r in readers if leads(r, {router})):
            other = next((b for b in readers if b != a and leads(b, group)), None)
            if other is not None:
                return f"stream {stream!r} is read by both {a!r} and {other!r}"
            if pipeline.stages[a].kind == "copy":
                outs = pipeline.stages[a].outputs(a)
                mine = [o for o in outs if router in below(pipeline, o)]
                theirs = [o for o in outs if group & below(pipeline, o)]
                pair = next(((m, t) for m in mine for t in theirs if m != t), None)
                if pair is not None:
                    return f"copy stage {a!r} writes it to both {pair[0]!r} and {pair[1]!r}"
    return None
