"""The one-shot worker (the book's worker as a process per item): run a stage's chain on ONE item document and exit.

Used by the manager's `process` executor for chains and in-process workers, through the worker contract itself:
`python -m services.workers.once --pipeline P --stage S` with WORK_ITEM_FILE and WORK_OUTPUT_DIR set. The result
JSON goes to stdout (exit 0), or the reason to stderr (exit 1). A bad spec or item document exits 2."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from services.core import strict_json
from services.core.command import Outcome
from services.core.item import WorkItem, encode_json
from services.core.spec import Pipeline, SpecError, load_pipeline

from .chain import build_chain

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def read_item(item_file: Path) -> WorkItem:
    """The inverse of core.command.item_document."""
    doc: dict[str, Any] = strict_json.loads(item_file.read_bytes())
    return WorkItem(id=doc["id"], data=doc.get("data") or {}, version=doc.get("version"), batch=doc.get("batch"),
                    attempts=max(int(doc.get("attempt", 1)) - 1, 0))


def run_once(pipeline: Pipeline, stage: str, item_file: Path, output_dir: Path) -> int:
    """Run the stage's chain on the item in `item_file`, outputs under `output_dir`. Returns the exit code."""
    if stage not in pipeline.stages:
        sys.stderr.write(f"no stage {stage!r} in pipeline {pipeline.name!r}\n")
        return EXIT_USAGE
    try:
        chain = build_chain(pipeline.stages[stage].body, stage, pipeline.plugins)
        item = read_item(item_file)
    except SpecError as exc:
        sys.stderr.write(f"invalid pipeline: {exc}\n")
        return EXIT_USAGE
    except (OSError, ValueError, KeyError, TypeError, ValidationError) as exc:
        sys.stderr.write(f"cannot read the item {item_file}: {exc}\n")
        return EXIT_USAGE
    outcome = chain.run(item, output_dir)
    try:
        result = encode_json(outcome.result or {}) if outcome.ok else b""
    except (TypeError, ValueError) as exc:
        outcome = Outcome(False, reason=f"result is not JSON: {exc}")
    if not outcome.ok:
        sys.stderr.write(outcome.reason + "\n")
        return EXIT_FAILED
    sys.stdout.buffer.write(result + b"\n")  # the contract's output, not a log line
    sys.stdout.flush()
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.workers.once", description=__doc__)
    parser.add_argument("--pipeline", required=True, help="path of pipeline.yaml")
    parser.add_argument("--stage", required=True)
    parser.add_argument("--item", default=os.environ.get("WORK_ITEM_FILE"), help="default: $WORK_ITEM_FILE")
    parser.add_argument("--out", default=os.environ.get("WORK_OUTPUT_DIR"), help="default: $WORK_OUTPUT_DIR")
    args = parser.parse_args(argv)
    if not args.item or not args.out:
        parser.error("WORK_ITEM_FILE and WORK_OUTPUT_DIR must be set (or --item and --out given)")
    try:
        pipeline = load_pipeline(args.pipeline)
    except SpecError as exc:
        sys.stderr.write(f"invalid pipeline: {exc}\n")
        return EXIT_USAGE
    return run_once(pipeline, args.stage, Path(args.item), Path(args.out))


if __name__ == "__main__":
    sys.exit(main())
