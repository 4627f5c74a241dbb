"""The image pipeline end to end (`batchmesh run`, every role a process, real OpenCV on generated scenes and
scikit-image photos): the report's totals are the sums of the per-image classifications, the colour chart is a
PNG, every image has its plate- and face-blurred copies with the pixels outside the blurred regions untouched,
and each original was deleted only after the join had fired, i.e. once the whole batch was blurred."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import redis
from runs import ROOT, start_run

from services.core import Keys
from services.core.embedded import redis_url

EXAMPLE = ROOT / "examples" / "images"
IMAGES = 12


def test_image_pipeline(tmp_path: Path) -> None:
    data, inbox = tmp_path / "data", tmp_path / "in"
    subprocess.run([sys.executable, str(EXAMPLE / "generate.py"), str(data), "--count", str(IMAGES), "--seed", "5"],
                   check=True, capture_output=True)
    shutil.copytree(data, inbox)  # the run deletes what it is given: keep the originals to compare against
    run = start_run(tmp_path, EXAMPLE / "pipeline.yaml", inbox)
    _, stderr = run.communicate(timeout=600)
    assert run.returncode == 0, stderr[-3000:]
    out = tmp_path / "out"

    per_image = [json.loads(p.read_text()) for p in out.glob("classify-*/*/*/vehicles.json")]
    assert len(per_image) == IMAGES
    report = json.loads((out / "report.json").read_text())
    assert report["final"] and report["items"] == IMAGES and report["aggregate"]["images"] == IMAGES
    assert report["aggregate"]["vehicles"] == dict(sum((Counter(r["counts"]) for r in per_image), Counter()))
    assert report["aggregate"]["colours"] == dict(sum((Counter(r["colours"]) for r in per_image), Counter()))
    assert sum(report["aggregate"]["vehicles"].values()) > 0
    chart = out / "colours.png"
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and cv2.imread(str(chart)) is not None

    changed_somewhere = 0
    for record in per_image:  # plate-blurred copies: changed inside the plate boxes only
        original = cv2.imread(str(data / record["name"]))
        blurred = cv2.imread(record["image"])
        outside = np.ones(original.shape[:2], bool)
        for x, y, w, h in record["anonymised"]:
            outside[y:y + h, x:x + w] = False
        assert np.array_equal(original[outside], blurred[outside]), record["name"]
        changed_somewhere += not np.array_equal(original[~outside], blurred[~outside])
    assert changed_somewhere >= IMAGES // 2
    assert len(list(out.glob("faces-*/*/*/*.png"))) == IMAGES  # face chain: plates and faces blurred
    assert json.loads((out / "faces.json").read_text())["aggregate"]["identities"]

    assert not list(inbox.glob("*.jpg")), "every original is deleted"
    deletions = {k: v for k, v in json.loads((out / "manifest.json").read_text())["results"].items()
                 if "deleted" in v}
    assert len(deletions) == IMAGES and all(d["deleted"] for d in deletions.values())
    with redis_url(None, tmp_path / "st" / "redis") as url:
        [(entry_id, fields)] = [e for e in redis.Redis.from_url(url).xrange(Keys("images").events())
                                if json.loads(e[1][b"event"])["stage"] == "barrier"]
    # The event's entry id is Redis's clock when the join fired, cut down to the millisecond; each deletion's `at`
    # is the same host clock read by the delete worker. No slack on this side: a deletion before the join fails.
    fired = int(entry_id.split(b"-")[0]) / 1000
    assert json.loads(fields[b"event"])["done"] == IMAGES
    first_deleted = min(d["at"] for d in deletions.values())
    assert fired <= first_deleted, f"an original was deleted {fired - first_deleted:.3f} s before the join fired"
    # and the join fired after the last blurred copy was written (file times are coarse: 10 ms of slack)
    last_blurred = max(p.stat().st_mtime for p in out.glob("blur-*/*/*/*.png"))
    assert last_blurred <= fired + 0.01, (last_blurred, fired)
