"""Checks `batchmesh validate` and `batchmesh run` make before anything starts, beyond the spec's own validation:
what the spec names must exist on this machine, and its predicates should mean what they look like.

- errors (exit 2, one line each): the source path (`--input` or `source.path`) is missing or of the wrong kind; a
  plugin file does not exist; a work stage's command cannot be found (argv[0] neither on PATH nor a file).
- warnings: a filter's `where` (or `source.filter`) gives a non-boolean on the items sampled from the source, e.g.
  `!data.secret`, which JMESPath reads as `(!data).secret` (null for every item: the filter drops everything);
  a splitter's `by` is null for every sampled item (everything goes to its default route).

Sampled predicates are those a listed item reaches before any work stage (a work stage's output is its result,
unknown before a run): the document is the one routers see, {"id", "name", "data", "version", "batch"}."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.core.expressions import compile_expression
from services.core.spec import SOURCE, Pipeline

SAMPLE = 20  # items listed from the source to try the predicates on


@dataclass
class Findings:
    errors: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)


def check(pipeline: Pipeline, *, input_given: bool, require_source: bool | None = None,
          sample: int = SAMPLE) -> Findings:
    """Every finding at once. A missing source is an error when it is required (default: when `input_given`, the
    `--input` of run or validate; a run always requires it), a warning for `validate` of a spec whose data is not
    there yet."""
    found = Findings()
    required = input_given if require_source is None else require_source
    backend = _source(pipeline, found, required, "--input" if input_given else "source.path")
    _plugins(pipeline, found)
    _commands(pipeline, found)
    if not found.errors:
        _workers(pipeline, found)
    if backend is not None:
        try:
            _predicates(pipeline, backend, found, sample)
        finally:
            backend.close()
    return found


def _source(pipeline: Pipeline, found: Findings, required: bool, where: str) -> Any:
    from services.source.server import build_backend

    src = pipeline.source
    try:
        return build_backend(src.type, path=src.path, glob=src.glob)  # the filter is sampled apart, below
    except ValueError as exc:
        (found.errors if required else found.warnings).append((where, str(exc)))
        return None


def _plugins(pipeline: Pipeline, found: Findings) -> None:
    for i, plugin in enumerate(pipeline.plugins):
        if plugin.endswith(".py") and not Path(plugin).is_file():
            found.errors.append((f"plugins[{i}]", f"no such Python file {plugin!r} (relative paths: to the spec "
                                                  f"file's directory, else to the working directory {os.getcwd()})"))


def _workers(pipeline: Pipeline, found: Findings) -> None:
    """Every in-process worker a stage names is registered (built-ins, or by a plugin) or importable as
    'module:function'. Plugins are imported only when a name is not a built-in (their import errors are one line)."""
    from services.workers import builtin  # noqa: F401 - registers the built-in workers
    from services.workers.registry import load_plugins, registered, resolve

    refs = [(f"stages.{name}.work.worker", work.worker) for name, work in pipeline.work_stages().items()
            if work.worker] + [(f"stages.{name}.work.chain[{i}].worker", ref.worker)
                               for name, work in pipeline.work_stages().items()
                               for i, ref in enumerate(work.chain or ()) if ref.worker]
    if all(worker in registered() for _, worker in refs):
        return
    try:
        load_plugins(pipeline.plugins)
    except Exception as exc:  # noqa: BLE001 - any error importing user code is reported, not a traceback
        found.errors.append(("plugins", f"cannot load the plugins: {type(exc).__name__}: {exc}"))
        return
    for where, worker in refs:
        try:
            resolve(worker)
        except LookupError as exc:
            found.errors.append((where, str(exc)))


def _search_path() -> str:
    """The PATH the roles get: this environment's bin directory first (see runner.run)."""
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def _commands(pipeline: Pipeline, found: Findings) -> None:
    for name, work in pipeline.work_stages().items():
        if work.executor in ("docker", "kubernetes"):  # runs in its image
            continue
        argvs = [(f"stages.{name}.work.command", work.command)] if work.command else [
            (f"stages.{name}.work.chain[{i}].command", ref.command) for i, ref in enumerate(work.chain or [])
            if ref.command]
        for where, argv in argvs:
            program = argv[0]
            if os.sep in program:
                ok = Path(program).is_file() and os.access(program, os.X_OK)
            else:
                ok = shutil.which(program, path=_search_path()) is not None
            if not ok:
                found.errors.append((where, f"stage {name!r}: command {program!r} not found (not on PATH, not an "
                                            "executable file)"))


def _documents(backend: Any, sample: int) -> list[dict[str, Any]]:
    try:
        items, _ = backend.list(sample)
    except Exception:  # noqa: BLE001 - sampling is advice: a source that cannot list is reported by the run
        return []
    return [{"id": it.get("name"), "name": it.get("name"), "data": it, "version": it.get("version"), "batch": None}
            for it in items if isinstance(it, dict)]


def _before_work(pipeline: Pipeline, name: str) -> bool:
    """True if items reach stage `name` straight from the source, through routers only."""
    producers = pipeline.producers()
    todo, seen = list(pipeline.stages[name].body.inputs), set()
    while todo:
        stream = todo.pop()
        if stream == SOURCE:
            continue
        stage = producers.get(stream)
        if stage is None or stage in seen:
            continue
        seen.add(stage)
        if pipeline.stages[stage].kind not in ("copy", "filter", "split", "shard", "merge"):
            return False
        todo.extend(pipeline.stages[stage].body.inputs)
    return True


def _hint(expression: str) -> str:
    text = expression.strip()
    if text.startswith("!") and not text.startswith("!(") and "." in text:
        head, rest = text[1:].split(".", 1)
        return f" (JMESPath reads `{text}` as `(!{head}).{rest}`: write `!({text[1:]})`)"
    return ""


def _predicates(pipeline: Pipeline, backend: Any, found: Findings, sample: int) -> None:
    docs = _documents(backend, sample)
    if not docs:
        return
    checks: list[tuple[str, str, list[dict[str, Any]]]] = []
    if pipeline.source.filter:
        checks.append(("source.filter", pipeline.source.filter, [d["data"] for d in docs]))
    for name, stage in pipeline.stages.items():
        if stage.kind == "filter" and _before_work(pipeline, name):
            checks.append((f"stages.{name}.filter.where", stage.body.where, docs))
    for where, expression, inputs in checks:
        values = [compile_expression(expression).search(doc) for doc in inputs]
        odd = [(doc, v) for doc, v in zip(inputs, values, strict=True) if not isinstance(v, bool)]
        if odd:
            doc, value = odd[0]
            found.warnings.append((where, f"`{expression}` is not a boolean on {len(odd)} of {len(values)} sampled "
                                          f"item(s) (e.g. {value!r} for {doc.get('name')!r}){_hint(expression)}; "
                                          "a filter keeps only items it is true for"))
    for name, stage in pipeline.stages.items():
        if stage.kind == "split" and _before_work(pipeline, name):
            values = [compile_expression(stage.body.by).search(doc) for doc in docs]
            if all(v is None for v in values):
                found.warnings.append((f"stages.{name}.split.by", f"`{stage.body.by}` is null for every sampled "
                                                                  f"item: all go to the default route "
                                                                  f"{stage.body.default!r}"))
