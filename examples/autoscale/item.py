"""One item of the autoscaling example (bench/autoscale_live.py, bench/autoscale_compose.py): a real subprocess
per item that takes ITEM_SECONDS of wall time (default 0.5: waiting, as on a remote call; our machines have two
cores, so a CPU-bound cost would cap the useful replicas at two) plus a little hashing, then writes its result."""

import hashlib
import json
import os
import pathlib
import time

began = time.perf_counter()
item = json.loads(pathlib.Path(os.environ["WORK_ITEM_FILE"]).read_text())
digest = hashlib.sha256(json.dumps(item).encode() * 2000).hexdigest()
time.sleep(max(0.0, float(os.environ.get("ITEM_SECONDS", "0.5")) - (time.perf_counter() - began)))
out = pathlib.Path(os.environ["WORK_OUTPUT_DIR"])
(out / "result.json").write_text(json.dumps({"id": item["id"], "sha256": digest[:16]}))
