"""Run a worker command on one item, per the worker contract: the item as JSON in a private file named by
WORK_ITEM_FILE, outputs in WORK_OUTPUT_DIR, the result JSON on stdout or in $WORK_OUTPUT_DIR/result.json.
Exit 0 = done, anything else (or the timeout) = failed. argv only: item data never meets a shell."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .item import WorkItem, encode_json

STDERR_TAIL = 2000


@dataclass(frozen=True)
class Outcome:
    ok: bool
    result: dict[str, Any] | None = None
    reason: str = ""


def item_document(item: WorkItem) -> bytes:
    """What the worker reads from WORK_ITEM_FILE."""
    return encode_json({"id": item.id, "name": item.id, "data": item.data, "version": item.version,
                        "batch": item.batch, "attempt": item.attempts + 1})


def read_result(stdout: bytes, output_dir: Path) -> dict[str, Any]:
    """result.json wins over stdout; non-JSON stdout is kept as text; nothing at all is an empty result."""
    result_file = output_dir / "result.json"
    text = result_file.read_bytes() if result_file.exists() else stdout.strip()
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {"stdout": text.decode(errors="replace")[-STDERR_TAIL:]}
    return value if isinstance(value, dict) else {"result": value}


def run_command(
    argv: list[str], item: WorkItem, output_dir: Path, *, timeout: float, env: dict[str, str] | None = None
) -> Outcome:
    """Run `argv` for `item`. The output dir is derived from the item, so a retry overwrites, never duplicates."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "result.json").unlink(missing_ok=True)  # a stale result of an earlier attempt must not count
    with tempfile.TemporaryDirectory(prefix="batchmesh-item-") as private:  # mode 0700: only we can read it
        item_file = Path(private) / "item.json"
        item_file.write_bytes(item_document(item))
        child_env = {**os.environ, **(env or {}), "WORK_ITEM_FILE": str(item_file),
                     "WORK_OUTPUT_DIR": str(output_dir)}
        try:
            proc = subprocess.Popen(
                argv, env=child_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                start_new_session=True,  # its own process group, so a timeout kills its children too
            )
        except OSError as exc:
            return Outcome(False, reason=f"cannot start {argv[0]!r}: {exc.strerror or exc}")
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return Outcome(False, reason=f"timed out after {timeout:g}s")
    if proc.returncode != 0:
        tail = stderr.decode(errors="replace").strip()[-STDERR_TAIL:]
        return Outcome(False, reason=f"exit code {proc.returncode}: {tail}" if tail else f"exit code {proc.returncode}")
    return Outcome(True, result=read_result(stdout, output_dir))
