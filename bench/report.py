"""The benchmark table: one row per figure, with the baseline it is compared to, the ratio, the target and
whether it is met; printed as text and saved as JSON."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Goal = Literal["ratio>=", "ratio<=", "value<=", "value>=", "info"]
HEADERS = ("benchmark", "ours", "baseline", "ratio", "target", "met?")


@dataclass
class Row:
    benchmark: str
    ours: float
    unit: str  # "items/s", "ms", "s", "MB"
    baseline: float | None = None
    baseline_name: str = ""
    goal: Goal = "info"
    target: float | None = None
    runs: list[float] = field(default_factory=list)  # ours, every repetition (the median is `ours`)
    baseline_runs: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        return self.ours / self.baseline if self.baseline else None

    @property
    def met(self) -> bool | None:
        if self.goal == "info" or self.target is None:
            return None
        if self.goal == "value<=":
            return self.ours <= self.target
        if self.goal == "value>=":
            return self.ours >= self.target
        assert self.ratio is not None
        return self.ratio >= self.target if self.goal == "ratio>=" else self.ratio <= self.target

    def cells(self) -> tuple[str, ...]:
        baseline = f"{fmt(self.baseline, self.unit)} ({self.baseline_name})" if self.baseline is not None else "—"
        ratio = f"{self.ratio:,.2f}×" if self.ratio is not None else "—"
        if self.goal == "info" or self.target is None:
            target = "(info)"
        elif self.goal in ("value<=", "value>="):
            target = f"{'≤' if self.goal == 'value<=' else '≥'} {fmt(self.target, self.unit)}"
        else:
            target = f"{'≥' if self.goal == 'ratio>=' else '≤'} {self.target:g}×"
        met = {None: "—", True: "yes", False: "NO"}[self.met]
        return self.benchmark, fmt(self.ours, self.unit), baseline, ratio, target, met

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio, "met": self.met}


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "items/s":
        return f"{value:,.0f} items/s"
    if unit == "ms":
        return f"{value:.3f} ms"
    if unit == "s":
        return f"{value:.2f} s"
    return f"{value:,.0f} {unit}"


def table(rows: list[Row]) -> str:
    body = [HEADERS, *(r.cells() for r in rows)]
    widths = [max(len(line[i]) for line in body) for i in range(len(HEADERS))]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in body]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "loadavg_at_end": os.getloadavg()}


def save(path: Path, rows: list[Row], config: dict[str, Any], details: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"config": config, "machine": machine(), "rows": [r.as_dict() for r in rows], "details": details,
           "table": table(rows)}
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")


def merge_save(path: Path, row: Row, config: dict[str, Any], details: dict[str, Any], key: str, label: str) -> None:
    """Add one benchmark's row to an existing out/bench.json (replacing an earlier row starting with `label`;
    its config and details under `key`), or write a new file."""
    try:
        doc = json.loads(path.read_text())
        rows = [Row(**{k: v for k, v in r.items() if k not in ("ratio", "met")}) for r in doc["rows"]
                if not r["benchmark"].startswith(label)]
        config, details = {**doc.get("config", {}), key: config}, {**doc.get("details", {}), key: details}
    except (OSError, ValueError, KeyError, TypeError):
        rows, config, details = [], {key: config}, {key: details}
    save(path, [*rows, row], config, details)
