"""In-process Python workers, registered by name: `@worker("name")` on `fn(item, output_dir) -> dict`.

Same semantics as a worker command: `item` is the document a command reads from WORK_ITEM_FILE, the return value
is the result, an exception is a failed attempt (retried, then dead-lettered) with the exception text as reason.
A worker can also be named "package.module:function" and is then imported by name (never eval'd)."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

WorkerFn = Callable[[dict[str, Any], Path], Any]

_REGISTRY: dict[str, WorkerFn] = {}
_NO_WRITES: set[int] = set()  # ids: registered functions live as long as the registry
_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def worker(name: str, *, writes: bool = True) -> Callable[[WorkerFn], WorkerFn]:
    """Register `fn` under `name`; the function itself is returned unchanged (it stays directly callable).

    Like a command's WORK_OUTPUT_DIR, `output_dir` exists when the function runs. A worker that never writes files
    says `writes=False` and saves a mkdir per item — on the fast path that is most of the runtime's cost."""

    def register(fn: WorkerFn) -> WorkerFn:
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not fn:
            # A second definition (module re-imported, e.g. by a test runner) replaces the first quietly, but two
            # different modules claiming one name is a mistake worth refusing.
            if (existing.__module__, existing.__qualname__) != (fn.__module__, fn.__qualname__):
                raise ValueError(f"worker {name!r} is already registered by {existing.__module__}")
        _REGISTRY[name] = fn
        if not writes:
            _NO_WRITES.add(id(fn))
        return fn

    return register


def writes_files(fn: WorkerFn) -> bool:
    return id(fn) not in _NO_WRITES


def registered() -> list[str]:
    return sorted(_REGISTRY)


def resolve(name: str) -> WorkerFn:
    """A registered name, or "package.module:function" (dotted attributes allowed after the colon)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if not _TARGET.match(name):
        known = ", ".join(registered()) or "none"
        raise LookupError(f"unknown worker {name!r} (registered: {known}; or give 'package.module:function')")
    module_name, _, attr_path = name.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise LookupError(f"worker {name!r}: cannot import {module_name!r}: {exc}") from None
    for attr in attr_path.split("."):
        try:
            target = getattr(target, attr)
        except AttributeError:
            raise LookupError(f"worker {name!r}: {module_name!r} has no attribute {attr_path!r}") from None
    if not callable(target):
        raise LookupError(f"worker {name!r} is not callable")
    return target


def public_api_importable() -> None:
    """Plugins import the public API by the distribution's name (`from batchmesh import worker`). From a source
    tree installed before the `batchmesh` package existed (an editable install maps only `services`), make it
    importable from beside `services`; otherwise (installed, or already importable) nothing changes."""
    import importlib.util
    import sys

    if importlib.util.find_spec("batchmesh") is None:
        root = Path(__file__).resolve().parents[2]
        if (root / "batchmesh" / "__init__.py").is_file():
            sys.path.append(str(root))


def load_plugins(plugins: list[str]) -> None:
    """Import the modules a pipeline names under `plugins:` so their @worker functions register: a dotted module
    name, or a path to a .py file (the spec resolves a relative path against its own directory first, then the
    working directory: core.spec.spec_relative). Loaded once per process."""
    import importlib.util
    import sys

    public_api_importable()
    for plugin in plugins:
        if not plugin.endswith(".py"):
            importlib.import_module(plugin)
            continue
        path = Path(plugin).resolve()
        name = f"batchmesh_plugin_{abs(hash(str(path)))}"
        if name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None or not path.is_file():
            raise LookupError(f"plugin {plugin!r}: no such Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # before exec: dataclasses and pickling look modules up by name
        spec.loader.exec_module(module)
