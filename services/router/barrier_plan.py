"""What a barrier (services.router.barrier) needs from the whole pipeline graph: which dead-lettered items it
stops waiting for, how many arrivals a batch has, who reads its output, its sharded siblings."""

from __future__ import annotations

from dataclasses import dataclass

from services.core.spec import Pipeline


@dataclass(frozen=True)
class BarrierPlan:
    """What a barrier needs from the whole pipeline graph."""

    dead_stages: list[str]  # whose dead-lettered items of a batch it stops waiting for
    expected: int | None  # a fixed number of arrivals per batch (partial aggregates), else the manifest's items
    read: bool  # some stage reads its output stream
    siblings: list[str]  # sharded reducers: an item another of them folded is not coming here
    reported: list[str] | None = None  # whose dead-lettered items it reports as failed (default: dead_stages)

    @classmethod
    def of(cls, pipeline: Pipeline, stage: str) -> BarrierPlan:
        sources = pipeline.barrier_sources(stage)
        siblings = pipeline.barrier_siblings(stage)
        upstream = pipeline.upstream(pipeline.stages[stage].body.input) | {stage}
        # A merging reduce waits for its partials: only a partial dead-lettered after its barrier is not coming,
        # never an item dead-lettered before (counting those would fire it early). A sharded reducer does not
        # wait for an item its sibling dead-lettered (a bad value) either.
        def through(name: str) -> set[str]:
            return pipeline.upstream(pipeline.stages[name].body.input) | {name}

        before = set().union(*(through(s) for s in sources))
        beside = set().union(*(through(s) for s in siblings))  # a sibling's map dead-letters items of this batch
        return cls(sorted((upstream - before) | beside), len(sources) if sources else None,
                   bool(pipeline.readers(stage)), siblings, sorted(upstream | beside))
