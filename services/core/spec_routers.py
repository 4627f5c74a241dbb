"""Router stage kinds of the pipeline spec (copy, filter, split, shard, merge). Their expressions are JMESPath
over the item document {"id", "name" (= id), "data", "version", "batch"} (see core.expressions)."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from .expressions import compile_expression


def _expression(text: str) -> str:
    compile_expression(text)
    return text


ExpressionText = Annotated[str, AfterValidator(_expression)]
RouteName = Annotated[str, Field(pattern=r"^[a-z0-9]([a-z0-9_-]{0,48}[a-z0-9])?$")]


class RouterSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: ClassVar[str]

    def outputs(self, stage: str) -> list[str]:
        """The streams this stage writes (see each kind for the naming)."""
        return [stage]


class _OneInput(RouterSpec):
    input: str = Field(min_length=1)

    @property
    def inputs(self) -> list[str]:
        return [self.input]


class CopySpec(_OneInput):
    """copy: {input, to: [a, b]} -> identical streams <stage>.a, <stage>.b"""

    kind: ClassVar[str] = "copy"
    to: list[RouteName] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> CopySpec:
        if len(set(self.to)) != len(self.to):
            raise ValueError(f"'to' names a branch twice: {self.to}")
        return self

    def outputs(self, stage: str) -> list[str]:
        return [f"{stage}.{branch}" for branch in self.to]


class FilterSpec(_OneInput):
    """filter: {input, where} -> stream <stage> with the items `where` holds for."""

    kind: ClassVar[str] = "filter"
    where: ExpressionText


class SplitSpec(_OneInput):
    """split: {input, by, routes: {value: route}, default} -> streams <stage>.<route>, <stage>.<default>."""

    kind: ClassVar[str] = "split"
    by: ExpressionText
    routes: dict[str, RouteName] = Field(default_factory=dict)
    default: RouteName  # required: a splitter never drops

    def outputs(self, stage: str) -> list[str]:
        return [f"{stage}.{route}" for route in self.route_names]

    @property
    def route_names(self) -> list[str]:
        return sorted({*self.routes.values(), self.default})


class ShardSpec(_OneInput):
    """shard: {input, key, shards: N} -> streams <stage>.0 ... <stage>.<N-1>."""

    kind: ClassVar[str] = "shard"
    key: ExpressionText
    shards: int = Field(ge=1, le=1024)
    max_backlog: int = Field(default=10_000, ge=1, description="A shard with more entries in flight is unhealthy.")
    spill: bool = Field(default=True, description="Route an unhealthy shard's new items to healthy shards.")

    def outputs(self, stage: str) -> list[str]:
        return [f"{stage}.{i}" for i in range(self.shards)]


class MergeSpec(RouterSpec):
    """merge: {inputs: [a, b]} -> stream <stage>, read fairly from every input."""

    kind: ClassVar[str] = "merge"
    inputs: list[str] = Field(min_length=1)
    per_input: int | None = Field(default=None, ge=1, description="Entries per input per round (default: batch).")

    @model_validator(mode="after")
    def _unique(self) -> MergeSpec:
        if len(set(self.inputs)) != len(self.inputs):
            raise ValueError(f"'inputs' names a stream twice: {self.inputs}")
        return self


ROUTER_SPECS: dict[str, type[RouterSpec]] = {
    cls.kind: cls for cls in (CopySpec, FilterSpec, SplitSpec, ShardSpec, MergeSpec)
}
