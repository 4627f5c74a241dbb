"""The chaos pipeline's work stage: `chaos-digest`, a real but cheap in-process worker (one SHA-256 per item).

In: an item of examples/chaos/generate.py, `{"name": str, "value": int, "kind": str}`. Out:
`{"value": value, "kind": kind, "digest": digest(name, value)}` — the numbers the reduce sums, which the harness's
checker (bench/chaos_check.py) recomputes from the input file on its own."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from batchmesh import worker


def digest(name: str, value: int) -> int:
    """0..999 from the item's name and value: what the worker computes and the checker recomputes."""
    return int(hashlib.sha256(f"{name}:{value}".encode()).hexdigest()[:8], 16) % 1000


@worker("chaos-digest", writes=False)
def chaos_digest(item: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    data = item["data"]
    return {"value": int(data["value"]), "kind": str(data["kind"]), "digest": digest(str(data["name"]),
                                                                                      int(data["value"]))}
