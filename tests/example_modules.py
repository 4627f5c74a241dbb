"""Example scripts (examples/<example>/<name>.py) loaded as modules, once per test session: the same module object
everywhere, so a worker registered by one test file is the one the others see."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(example: str, name: str) -> ModuleType:
    from services.workers.registry import public_api_importable

    public_api_importable()  # the examples import `batchmesh`, the public API
    key = f"{example}_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, EXAMPLES / example / f"{name}.py")
        assert spec and spec.loader
        sys.modules[key] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[key]
