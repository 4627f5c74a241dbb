"""Expressions over items: JMESPath, never eval — a pipeline spec can read an item, never run code.

An expression made only of field paths, scalar literals, ==/!=, number orderings, !, && and || is *simple*: it
also compiles to a small program the routers' Lua script evaluates with the same semantics, so such routers run
server-side.

Semantics both evaluators share: ordering a string against a number is null (jmespath would raise); any other
failure on an item (a function given the wrong type) makes the whole expression null; truthiness is JMESPath's
(false, null, "", [] and {} are false, every number is true); a value becomes a route/shard key when it is a
string, a boolean ("true"/"false") or an integer below 2**53."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import jmespath
from jmespath.exceptions import JMESPathError
from jmespath.functions import Functions
from jmespath.visitor import TreeInterpreter

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

    __slots__ = ("compiled", "path", "program", "text")

    def __init__(self, text: str, compiled: Any, program: dict[str, Any] | None) -> None:
        self.text, self.compiled, self.program = text, compiled, program
        self.path = _path(compiled.parsed)  # a plain field path (`data.counts`) is looked up without the interpreter

    @property
    def simple(self) -> bool:
        return self.program is not None

    @property
    def program_json(self) -> str:
        return json.dumps(self.program, separators=(",", ":")) if self.program is not None else ""

    def search(self, document: Any) -> Any:
        if self.path is not None:
            for key in self.path:
                document = document.get(key) if isinstance(document, dict) else None
            return document
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


