"""Reading a pipeline file as YAML, defensively: a bad file is one SpecError line naming where, never a traceback.

Refused, each with the path (or the file) and the line: a file over MAX_SPEC_BYTES; bytes that are not UTF-8;
text that is not YAML (the parser's problem and position, on one line); tags beyond plain data (`!!python/...`:
`yaml.safe_load` rules, nothing is ever constructed from a tag); a key given twice in one mapping (YAML 1.2 says
keys are unique; PyYAML would silently keep the last one); anchors and aliases that expand to more than
MAX_SPEC_NODES nodes (the "billion laughs" bomb: validation would walk every copy) or refer to themselves.
Merge keys (`<<: *defaults`) keep working: a key a merge brings in may be overridden.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_SPEC_BYTES = 1024 * 1024  # a pipeline spec is a few KB; a megabyte is plenty
MAX_SPEC_NODES = 100_000  # nodes after expanding aliases (the largest example has a few hundred)
MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlProblem(ValueError):
    """`where` (a dotted field path, or "" for the file itself) and why."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(reason)
        self.where, self.reason = where, reason


def read_yaml(path: Path) -> Any:
    """The plain data (dicts, lists, scalars) of the YAML file at `path`; YamlProblem for anything above."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise YamlProblem("", f"cannot read: {exc.strerror or exc}") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise YamlProblem("", f"larger than {MAX_SPEC_BYTES} bytes: not a pipeline spec")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise YamlProblem("", f"not UTF-8 text: byte 0x{raw[exc.start]:02x} on line {line}") from None
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _check(node)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        raise YamlProblem("", f"not valid YAML: {_one_line(exc)}") from None
    except yaml.YAMLError as exc:
        raise YamlProblem("", f"not valid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise YamlProblem("", "nested too deeply") from None


def _one_line(exc: yaml.MarkedYAMLError) -> str:
    problem = ": ".join(" ".join(part.split()) for part in (exc.context, exc.problem) if part) or "cannot parse"
    mark = exc.problem_mark or exc.context_mark
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark else problem


def _check(root: Node) -> None:
    """Refuse alias bombs and self-references (by the expanded size, counted once per distinct node), then
    duplicate keys (walking the tree, now known to be small)."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(node: Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_:
            raise YamlProblem("", f"an alias refers to its own anchor (line {node.start_mark.line + 1})")
        open_.add(key)
        total = 1
        if isinstance(node, SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        open_.discard(key)
        sizes[key] = total
        if total > MAX_SPEC_NODES:
            raise YamlProblem("", f"anchors and aliases expand to more than {MAX_SPEC_NODES} nodes "
                                  f"(line {node.start_mark.line + 1}): not a pipeline spec")
        return total

    size(root)
    _duplicates(root, [])


def _duplicates(node: Node, trail: list[str]) -> None:
    if isinstance(node, SequenceNode):
        for i, child in enumerate(node.value):
            _duplicates(child, [*trail[:-1], f"{trail[-1]}[{i}]"] if trail else [f"[{i}]"])
    elif isinstance(node, MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            if key.tag == MERGE_TAG:
                continue
            name = key.value if isinstance(key, ScalarNode) else f"<{key.id} key>"
            line = key.start_mark.line + 1
            if name in seen:
                raise YamlProblem(".".join([*trail, name]), f"duplicate key {name!r} (line {line}; first given on "
                                                            f"line {seen[name]})")
            seen[name] = line
            _duplicates(value, [*trail, name])
