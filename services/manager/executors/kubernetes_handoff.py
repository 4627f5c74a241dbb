"""The step between two adapters of the `kubernetes` executor's multi-worker pod (an init container, see
kubernetes_job): adapter i−1's result becomes adapter i's item document — the same item (id, version, batch,
attempt) with `data` = the result, as services/workers/chain.py passes it along in one process.

    python -m services.manager.executors.kubernetes_handoff --item PREV_ITEM --result PREV_OUT/result.json
        --next NEXT_ITEM --adapter "chain[0] thumb"

The result is read from adapter i−1's $WORK_OUTPUT_DIR/result.json (an init container's stdout only reaches the
pod's log, never the next container): a missing or unreadable file fails the pod (exit 1, the reason on stderr, so
it becomes the dead-letter reason), a JSON value that is not an object becomes {"result": value}, as
core.command.read_result makes it. Exit 2: bad arguments or an unreadable item document."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from services.core.item import encode_json

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def handoff(item_file: Path, result_file: Path, next_file: Path, adapter: str) -> int:
    """Write `next_file`; returns the exit code (the reason, if any, on stderr)."""
    try:
        doc: dict[str, Any] = json.loads(item_file.read_bytes())
        if not isinstance(doc, dict) or "id" not in doc:
            raise ValueError("not an item document (no id)")
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"{adapter}: cannot read the item document {item_file}: {exc}\n")
        return EXIT_USAGE
    if not result_file.exists():
        sys.stderr.write(f"{adapter} wrote no {result_file}: in a Kubernetes multi-worker pod an adapter before the "
                         "last passes its result on in $WORK_OUTPUT_DIR/result.json (its stdout goes only to the "
                         "pod's log); write {} for an empty result\n")
        return EXIT_FAILED
    try:
        value = json.loads(result_file.read_bytes() or b"{}")
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"{adapter}: result.json is not JSON: {exc}\n")
        return EXIT_FAILED
    doc["data"] = value if isinstance(value, dict) else {"result": value}
    tmp = next_file.with_name(next_file.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(encode_json(doc))
    tmp.replace(next_file)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name if __spec__ else 'kubernetes_handoff'}",
                                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--item", required=True, type=Path, help="adapter i-1's item document")
    parser.add_argument("--result", required=True, type=Path, help="adapter i-1's $WORK_OUTPUT_DIR/result.json")
    parser.add_argument("--next", required=True, type=Path, help="where adapter i's item document goes")
    parser.add_argument("--adapter", default="chain[?]", help="adapter i-1, for the reason: chain[<i>] <name>")
    args = parser.parse_args(argv)
    return handoff(args.item, args.result, args.next, args.adapter)


if __name__ == "__main__":
    sys.exit(main())
