"""The baseline: the pipeline's workers called one after another over a directory, in one process.

Per image: plate-detect → plate-blur on the original; vehicle-detect → vehicle-classify and face-detect →
face-tag → face-blur on the plate-blurred copy. The final anonymised PNG (plates and faces blurred) lands in
OUT/blurred/, totals in OUT/report.json (with every image's details, for evaluate.py) and OUT/colours.png."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from . import workers
from .report import colour_chart, totals

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def process(path: Path, out: Path) -> dict[str, Any]:
    item: dict[str, Any] = {"id": path.name, "name": path.name, "data": {"uri": path.resolve().as_uri()}}
    work = out / "work" / path.stem

    def step(fn: Any, data: dict[str, Any], where: str) -> dict[str, Any]:
        (work / where).mkdir(parents=True, exist_ok=True)  # as the worker runtime does before a worker runs
        return fn({**item, "data": data}, work / where)

    found = step(workers.plate_detect, item["data"], "plates")
    blurred = step(workers.plate_blur, found, "plate-blur")
    detected = step(workers.vehicle_detect, blurred, "vehicles")
    classified = step(workers.vehicle_classify, detected, "vehicles")
    faces = step(workers.face_detect, blurred, "faces")
    tagged = step(workers.face_tag, faces, "faces")
    final = step(workers.face_blur, tagged, str(out / "blurred"))
    return {"name": path.name, "plates": found["plates"], "vehicles": classified["vehicles"],
            "faces": tagged["faces"], "blurred": final["blurred"]}


def run(indir: Path, out: Path) -> dict[str, Any]:
    started = time.perf_counter()
    paths = sorted(p for p in indir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    per_image = [process(p, out) for p in paths]
    report = {**totals(per_image), "seconds": round(time.perf_counter() - started, 3),
              "per_image": {r["name"]: r for r in per_image}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    colour_chart(report["colours"], out / "colours.png")
    return report
