"""The pipeline spec (pipeline.yaml, apiVersion batchmesh/v1), validated by pydantic before anything starts.

A stage is a one-key mapping naming its kind (`work: {...}`); its output is the stream named after the stage.
`source` is the stream the manager dispatches listed items to. A bad spec raises SpecError carrying the path of
the bad field, which the CLI turns into exit code 2."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationError, field_validator, model_validator

from .retry import RetrySpec
from .spec_barriers import BARRIER_SPECS, JoinSpec, ReduceSpec
from .spec_base import K8S_NAME, K8sName, SpecError, Strict, parse_duration
from .spec_container import StageContainer
from .spec_containers import ContainersSpec
from .spec_kubernetes import StageKubernetes, check_stage
from .spec_routers import ROUTER_SPECS, CopySpec, FilterSpec, MergeSpec, ShardSpec, SplitSpec
from .spec_source import ScheduleSpec, SourceSpec

SOURCE = "source"


class Replicas(Strict):
    min: int = Field(default=1, ge=0)
    max: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> Replicas:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        return self


class WorkerRef(Strict):
    """One worker adapter: a command (argv, never a shell) or a registered in-process worker."""

    command: list[str] | None = None
    worker: str | None = None
    env: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _exactly_one(self) -> WorkerRef:
        if (self.command is None) == (self.worker is None):
            raise ValueError("give exactly one of 'command' (argv list) or 'worker' (registered name)")
        if self.command is not None and not self.command:
            raise ValueError("command is empty")
        return self


class WorkSpec(Strict):
    input: str
    command: list[str] | None = None
    worker: str | None = None
    chain: list[WorkerRef] | None = Field(default=None, description="Multi-worker: adapters applied in order.")
    executor: Literal["stream", "process", "rq", "docker", "kubernetes"] = "stream"
    replicas: Replicas = Field(default_factory=Replicas)
    concurrency: int = Field(default=2, ge=1, le=256, description="Items in flight per replica (or process slots).")
    timeout: float = Field(default=300.0, gt=0)
    env: dict[str, str] = Field(default_factory=dict)
    max_deliveries: int | None = Field(default=None, ge=1)
    retry: RetrySpec | None = Field(default=None, description="Backoff between deliveries (core.retry); fields "
                                                              "left out are the defaults' retry.")
    container: StageContainer | None = Field(default=None, description="executor docker: the sandbox each item "
                                                                       "runs in (see spec_container).")
    kubernetes: StageKubernetes | None = Field(default=None, description="executor kubernetes: the Job each item "
                                                                         "runs as (see spec_kubernetes).")

    _duration = field_validator("timeout", mode="before")(parse_duration)

    @field_validator("replicas", mode="before")
    @classmethod
    def _int_replicas(cls, value: Any) -> Any:
        return {"min": value, "max": value} if isinstance(value, int) else value

    @model_validator(mode="after")
    def _one_worker(self) -> WorkSpec:
        given = [k for k in ("command", "worker", "chain") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of 'command', 'worker' or 'chain'")
        if self.executor == "docker" and self.container is None:
            raise ValueError("executor docker needs a container section naming the image: container: {image: ...}")
        if self.executor != "docker" and self.container is not None:
            raise ValueError(f"container is used by executor docker only (this stage's executor: {self.executor})")
        check_stage(self)
        return self

    @property
    def adapters(self) -> list[WorkerRef]:
        """The worker chain; a single worker is a chain of one."""
        if self.chain:
            return self.chain
        return [WorkerRef(command=self.command, worker=self.worker, env={})]

    @property
    def inputs(self) -> list[str]:
        return [self.input]


KINDS = ("work", *ROUTER_SPECS, *BARRIER_SPECS)


class StageSpec(Strict):
    """Exactly one kind: `work` (workers run items), a router (copy, filter, split, shard, merge) or a barrier
    (join, reduce)."""

    work: WorkSpec | None = None
    copy_: CopySpec | None = Field(default=None, alias="copy")
    filter: FilterSpec | None = None
    split: SplitSpec | None = None
    shard: ShardSpec | None = None
    merge: MergeSpec | None = None
    join: JoinSpec | None = None
    reduce: ReduceSpec | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> StageSpec:
        given = [kind for kind in KINDS if self._get(kind) is not None]
        if len(given) != 1:
            raise ValueError(f"a stage names exactly one kind of {', '.join(KINDS)}; got {given or 'none'}")
        return self

    def _get(self, kind: str) -> Any:
        return getattr(self, "copy_" if kind == "copy" else kind)

    @property
    def kind(self) -> str:
        return next(kind for kind in KINDS if self._get(kind) is not None)

    @property
    def body(self) -> Any:
        """The kind's own spec: a WorkSpec or one of the router specs."""
        return self._get(self.kind)

    def outputs(self, name: str) -> list[str]:
        """Streams this stage writes: a work stage its own name; routers as their kind names them."""
        return [name] if self.kind == "work" else self.body.outputs(name)


class Defaults(Strict):
    max_deliveries: int = Field(default=3, ge=1)
    visibility_timeout: float = Field(default=30.0, gt=0)
    retry: RetrySpec = Field(default_factory=RetrySpec, description="Backoff between deliveries (core.retry).")

    _duration = field_validator("visibility_timeout", mode="before")(parse_duration)


def _stage_name(name: str) -> str:
    if name == SOURCE or not re.match(K8S_NAME, name):
        raise ValueError(f"bad stage name {name!r}: lowercase letters, digits and '-', not 'source'")
    return name


StageName = Annotated[str, AfterValidator(_stage_name)]  # a dict key: its error path names the bad stage


class Pipeline(Strict):
    api_version: Literal["batchmesh/v1"] = Field(alias="apiVersion")
    kind: Literal["Pipeline"] = "Pipeline"
    name: K8sName
    source: SourceSpec
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    defaults: Defaults = Field(default_factory=Defaults)
    plugins: list[str] = Field(default_factory=list, description="Modules or .py files registering @worker functions.")
    stages: dict[StageName, StageSpec] = Field(min_length=1)
    containers: ContainersSpec = Field(default_factory=ContainersSpec,
                                       description="Packaging for the container renderings (see ContainersSpec).")

    def _check_not_after_itself(self) -> None:
        if self.schedule.after is not None and self.schedule.after.pipeline == self.name:
            raise SpecError("schedule.after.pipeline",
                            "names this pipeline itself: each batch would start the next")

    def readers(self, stream: str) -> list[str]:
        return [name for name, st in self.stages.items() if stream in st.body.inputs]

    def sinks(self) -> list[str]:
        """Work stages nobody reads from: they record results and mark items done."""
        return [name for name, st in self.stages.items() if st.kind == "work" and not self.readers(name)]

    def work_stages(self) -> dict[str, WorkSpec]:
        return {name: st.body for name, st in self.stages.items() if st.kind == "work"}

    def router_stages(self) -> dict[str, Any]:
        """Routers and barriers: the stages the router role runs."""
        return {name: st.body for name, st in self.stages.items() if st.kind != "work"}

    def barrier_stages(self) -> dict[str, Any]:
        return {name: st.body for name, st in self.stages.items() if st.kind in BARRIER_SPECS}

    def upstream(self, stream: str) -> set[str]:
        """Every stage an item passes before it is on `stream`."""
        producers, seen, todo = self.producers(), set(), [stream]
        while todo:
            name = producers.get(todo.pop())
            if name is not None and name not in seen:
                seen.add(name)
                todo.extend(s for s in self.stages[name].body.inputs if s != SOURCE)
        return seen

    def barrier_sources(self, name: str) -> list[str]:
        """The barriers whose outputs feed barrier `name` with no barrier between (for a reduce of partial
        aggregates: one item per upstream barrier and batch). Empty: it waits for the batch's items."""
        producers = self.producers()
        found, seen, todo = [], set(), list(self.stages[name].body.inputs)
        while todo:
            stage = producers.get(todo.pop())
            if stage is None or stage in seen:
                continue
            seen.add(stage)
            if self.stages[stage].kind in BARRIER_SPECS:
                found.append(stage)
            else:
                todo.extend(s for s in self.stages[stage].body.inputs if s != SOURCE)
        return sorted(found)

    def producers(self) -> dict[str, str]:
        """Stream name -> the stage writing it."""
        return {out: name for name, st in self.stages.items() for out in st.outputs(name)}

    def check_graph(self) -> None:
        """Every input is a stream someone writes, every router output is read, the graph has no cycle. Raises
        one SpecError carrying every error found."""
        errors: list[tuple[str, str]] = []
        for check in (self._check_not_after_itself, self._check_streams):
            try:
                check()
            except SpecError as exc:
                errors += exc.errors
        if errors:  # a cycle or barrier check over unknown streams would only repeat them
            raise SpecError.of(errors)
        try:
            self._check_cycles()
        except SpecError as exc:
            errors += exc.errors
        for name in self.barrier_stages() if not errors else ():
            try:
                self._check_barrier(name)
            except SpecError as exc:
                errors += exc.errors
        if errors:
            raise SpecError.of(errors)

    def _check_streams(self) -> None:
        producers, errors = self.producers(), []
        for name, stage in self.stages.items():
            field = "inputs" if stage.kind == "merge" else "input"
            for stream in stage.body.inputs:
                if stream != SOURCE and stream not in producers:
                    known = ", ".join(sorted([SOURCE, *producers]))
                    errors.append((f"stages.{name}.{stage.kind}.{field}",
                                   f"unknown stream {stream!r} (streams: {known})"))
            if stage.kind not in ("work", *BARRIER_SPECS):  # a barrier's output may go unread: events tell too
                for stream in stage.outputs(name):
                    if not self.readers(stream):
                        errors.append((f"stages.{name}.{stage.kind}", f"output {stream!r} is read by no stage"))
        if errors:
            raise SpecError.of(errors)

    def _check_cycles(self) -> None:
        producers = self.producers()
        state: dict[str, int] = {}

        def visit(node: str, trail: list[str]) -> None:
            if state.get(node) == 1:  # the input of the stage we came from closes the cycle
                where = trail[-1]
                raise SpecError(f"stages.{where}.{self.stages[where].kind}.input",
                                "cycle: " + " -> ".join([*trail, node]))
            if state.get(node) == 2:
                return
            state[node] = 1
            for stream in self.stages[node].body.inputs:
                if stream != SOURCE:
                    visit(producers[stream], [*trail, node])
            state[node] = 2

        for name in self.stages:
            visit(name, [])

    def barrier_siblings(self, name: str) -> list[str]:
        """Sharded reducers: the other barriers feeding the same downstream barrier as `name`. Together they see
        the whole batch; each fires once every item was folded by one of them (or dead-lettered on the way)."""
        found = {s for other in self.barrier_stages() if name in self.barrier_sources(other)
                 for s in self.barrier_sources(other)}
        return sorted(found - {name})

    def _check_barrier(self, name: str) -> None:
        """A barrier counts the batch's items: every item must reach it (or a sibling), be dead-lettered, or be sent
        away by a router that records it as skipped for the barrier (core.spec_skips) — exact only if no copy of
        the item reaches the barrier another way. A reduce of partial aggregates waits for one item per upstream
        barrier and batch: nothing between them may hold one back."""
        from .spec_skips import skip_problem

        kind = self.stages[name].kind
        where = f"stages.{name}.{kind}.input"
        sources = self.barrier_sources(name)
        if not sources:
            problem = skip_problem(self, name)
            if problem:
                raise SpecError(where, problem)
            return
        upstream = self.upstream(self.stages[name].body.input)
        upstream -= set().union(*(self.upstream(self.stages[b].body.input) | {b} for b in sources))
        for stage in sorted(upstream):
            spec = self.stages[stage]
            if spec.kind in ("filter", "split"):
                raise SpecError(where, f"{spec.kind} stage {stage!r} is between {', '.join(map(repr, sources))} and "
                                       f"the {kind}, which waits for exactly one partial from each of them per "
                                       f"batch: put it before {'them' if len(sources) > 1 else 'it'} (it may filter "
                                       f"the items) or after the {kind}")


def load_pipeline(path: str | Path, overrides: dict[str, Any] | None = None) -> Pipeline:
    """Read and validate a pipeline file. Raises SpecError (path of the bad field + reason)."""
    from .spec_yaml import YamlProblem, read_yaml

    try:
        raw = read_yaml(Path(path))
    except YamlProblem as exc:  # one line: the field path (a duplicate key) or the file, and why
        raise SpecError(exc.where or str(path), exc.reason) from None
    if not isinstance(raw, dict):
        what = "empty" if raw is None else f"a {type(raw).__name__}, not a mapping"
        raise SpecError(str(path), f"{what} (a pipeline spec is a mapping: apiVersion, name, source, stages)")
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {}) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            raise SpecError(".".join(parents), f"not a mapping, cannot set {last!r}")
        node[last] = value
    try:
        pipeline = Pipeline.model_validate(raw)
    except ValidationError as exc:  # every error, each with the path of its field
        raise SpecError.of([(".".join(str(p) for p in error["loc"] if p != "[key]") or "(top)",
                             error["msg"].removeprefix("Value error, ")) for error in exc.errors()]) from None
    pipeline.check_graph()
    resolve_paths(pipeline, Path(path).resolve().parent)
    return pipeline


def spec_relative(entry: str, spec_dir: Path) -> str:
    """The path rule for `plugins:` files and a command's argv entries. A relative path naming a file under the
    spec file's directory becomes that file's absolute path; one with a directory part (`examples/x/w.py`) is
    also looked for under the spec directory's parents, nearest first — so the examples' repository-relative
    paths work whatever the working directory, and in the containers (/app/examples/...). Anything else is left
    as written: a relative path then resolves against the working directory."""
    if not entry or entry.startswith(("-", "/", "~")) or "\0" in entry:
        return entry
    bases = [spec_dir, *spec_dir.parents] if "/" in entry.strip("/") else [spec_dir]
    for base in bases:
        candidate = base / entry
        try:
            if candidate.is_file():
                return str(candidate)
        except (OSError, ValueError):  # a name too long for the filesystem, say
            return entry
    return entry


def resolve_paths(pipeline: Pipeline, spec_dir: Path) -> None:
    """Apply `spec_relative` to the plugin files (`.py` entries; module names stay) and every command's argv
    (not a docker or kubernetes stage's: its command runs in its image, from the image's working directory)."""
    pipeline.plugins = [spec_relative(p, spec_dir) if p.endswith(".py") else p for p in pipeline.plugins]
    for work in pipeline.work_stages().values():
        if work.executor in ("docker", "kubernetes"):
            continue
        if work.command:
            work.command = [spec_relative(arg, spec_dir) for arg in work.command]
        for ref in work.chain or ():
            if ref.command:
                ref.command = [spec_relative(arg, spec_dir) for arg in ref.command]
