"""Router stage kinds of the pipeline spec (copy, filter, split, shard, merge) and the expressions they use.

Expressions are JMESPath over the item document {"id", "name" (= id), "data", "version", "batch"}, never eval.
They live here, in core, so every role can use them (the source ambassador's filter too). An expression made only
of field paths, scalar literals, ==/!=, number orderings, !, && and || is *simple*: it also compiles to a small
program the routers' Lua script evaluates with the same semantics, so such routers run server-side.

Semantics both evaluators share: ordering a string against a number is null (jmespath would raise); any other
failure on an item (a function given the wrong type) makes the whole expression null; truthiness is JMESPath's
(false, null, "", [] and {} are false, every number is true); a value becomes a route/shard key when it is a
string, a boolean ("true"/"false") or an integer below 2**53."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import lru_cache
from typing import Annotated, Any, ClassVar

import jmespath
from jmespath.exceptions import JMESPathError
from jmespath.functions import Functions
from jmespath.visitor import TreeInterpreter
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

EXACT = 2**53  # numbers beyond this are not exact in Lua (doubles): they are never keys nor simple literals
_KNOWN_FUNCTIONS = set(Functions().FUNCTION_TABLE)
_DOCUMENT_FIELDS = ("id", "name", "data", "version", "batch")


def truthy(value: Any) -> bool:
    """JMESPath truthiness: false, null and empty string/array/object are false; every number (0 too) is true."""
    if value is None or value is False:
        return False
    if isinstance(value, str | list | dict):
        return bool(value)
    return True


def route_key(value: Any) -> str | None:
    """The key a value selects a route or a shard by; None for values that are no key (null, float, object...)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int) and abs(value) < EXACT:
        return str(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < EXACT:
        return str(int(value))
    return None


class _Interpreter(TreeInterpreter):
    def visit_comparator(self, node: dict[str, Any], value: Any) -> Any:
        # jmespath raises TypeError ordering a string against a number; that comparison is null, not the whole
        # expression (so `!(data.ch < `0`)` is true for a string ch, as in the Lua evaluator).
        try:
            return super().visit_comparator(node, value)
        except TypeError:
            return None


_INTERPRETER = _Interpreter()


class Expression:
    """A compiled JMESPath expression; `program` is its Lua form when it is simple, else None."""

    __slots__ = ("compiled", "program", "text")

    def __init__(self, text: str, compiled: Any, program: dict[str, Any] | None) -> None:
        self.text, self.compiled, self.program = text, compiled, program

    @property
    def simple(self) -> bool:
        return self.program is not None

    @property
    def program_json(self) -> str:
        return json.dumps(self.program, separators=(",", ":")) if self.program is not None else ""

    def search(self, document: Any) -> Any:
        try:
            return _INTERPRETER.visit(self.compiled.parsed, document)
        except Exception:  # noqa: BLE001 - e.g. a function given the wrong type on an odd item: that is null
            return None

    def __repr__(self) -> str:
        return f"Expression({self.text!r}, simple={self.simple})"


@lru_cache(maxsize=1024)
def compile_expression(text: str) -> Expression:
    """Compile once; ValueError "bad expression ..." for one that does not parse or calls an unknown function."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("bad expression: empty (expected JMESPath, e.g. \"data.channel == 'sms'\")")
    try:
        compiled = jmespath.compile(text)
    except JMESPathError as exc:
        raise ValueError(f"bad expression {text!r}: {_reason(exc)}") from None
    # jmespath only notices an unknown function when it runs; a typo would then silently match nothing.
    unknown = _functions(compiled.parsed) - _KNOWN_FUNCTIONS
    if unknown:
        raise ValueError(f"bad expression {text!r}: unknown function(s) {', '.join(sorted(unknown))}")
    return Expression(text, compiled, _program(compiled.parsed))


def _reason(exc: JMESPathError) -> str:
    """One line: jmespath's messages end with the expression and a caret on lines of their own."""
    first = str(exc).splitlines()[0].rstrip(":")
    position = getattr(exc, "lex_position", None)
    return f"{first} (at column {position})" if position is not None and "column" not in first else first


def compile_predicate(text: str) -> Callable[[Any], bool]:
    """A predicate over a document: the expression's result is truthy."""
    expression = compile_expression(text)
    return lambda document: truthy(expression.search(document))


def _functions(node: Any) -> set[str]:
    if not isinstance(node, dict):
        return set()
    found = {node["value"]} if node.get("type") == "function_expression" else set()
    for child in node.get("children", ()):
        found |= _functions(child)
    return found


def _path(node: dict[str, Any]) -> list[str] | None:
    if node["type"] == "field":
        return [node["value"]]
    if node["type"] == "subexpression" and all(c["type"] == "field" for c in node["children"]):
        return [c["value"] for c in node["children"]]
    return None


def _literal(node: dict[str, Any]) -> tuple[bool, Any]:
    """(is a scalar literal Lua represents exactly, its value)."""
    if node["type"] != "literal":
        return False, None
    value = node["value"]
    exact = value is None or isinstance(value, bool | str) or (isinstance(value, float) and abs(value) < float("inf")) \
        or (isinstance(value, int) and abs(value) < EXACT)
    return exact, value if exact else None


def _program(node: dict[str, Any]) -> dict[str, Any] | None:
    """The Lua form of a simple expression: {"p": path} | {"v": literal} | {"op": name, "a": ..., "b": ...}."""
    kind = node["type"]
    if (path := _path(node)) is not None:
        return {"p": path} if path[0] in _DOCUMENT_FIELDS else {"v": None}  # other top-level fields are null
    if kind == "literal":
        ok, value = _literal(node)
        return {"v": value} if ok else None
    if kind == "not_expression":
        inner = _program(node["children"][0])
        return {"op": "not", "a": inner} if inner is not None else None
    if kind in ("and_expression", "or_expression"):
        a, b = (_program(c) for c in node["children"])
        return {"op": kind.split("_")[0], "a": a, "b": b} if a is not None and b is not None else None
    if kind == "comparator":
        # One side a path, the other a scalar literal (or both literals): never two containers, whose equality
        # Lua cannot decide ([] and {} decode alike). Orderings need a number literal (Lua orders strings by
        # locale, JMESPath by code point).
        left, right = node["children"]
        sides = [_path(left) is not None, _path(right) is not None]
        if all(sides):
            return None
        literals = [_literal(c) for c in (left, right) if c["type"] == "literal"]
        if len(literals) + sum(sides) != 2 or not all(ok for ok, _ in literals):
            return None
        if node["value"] not in ("eq", "ne"):
            numbers = [v for _, v in literals if isinstance(v, int | float) and not isinstance(v, bool)]
            if len(numbers) != len(literals):
                return None
        a, b = _program(left), _program(right)
        return {"op": node["value"], "a": a, "b": b} if a is not None and b is not None else None
    return None


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
