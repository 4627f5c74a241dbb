"""The chaos pipeline's work stage: `chaos-digest`, a real but cheap in-process worker (one SHA-256 per item).

In: an item of examples/chaos/generate.py, `{"name": str, "value": int, "kind": str}`. Out:
`{"value": value, "kind": kind, "digest": digest(name, value)}` — the numbers the reduce sums, which the harness's
checker (bench/chaos_check.py) recomputes from the input file on its own. CHAOS_ITEM_MS (default 0) paces it: a
sleep per item, so that a short run lasts long enough for its kills to land while the map runs."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

from batchmesh import worker

ITEM_S = float(os.environ.get("CHAOS_ITEM_MS", "0")) / 1000


def digest(name: str, value: int) -> int:
    """0..999 from the item's name and value: what the worker computes and the checker recomputes."""
    return int(hashlib.sha256(f"{name}:{value}".encode()).hexdigest()[:8], 16) % 1000


@worker("chaos-digest", writes=False)
def chaos_digest(item: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    data = item["data"]
    if ITEM_S:
        time.sleep(ITEM_S)
    return {"value": int(data["value"]), "kind": str(data["kind"]), "digest": digest(str(data["name"]),
                                                                                      int(data["value"]))}
