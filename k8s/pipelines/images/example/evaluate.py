"""Precision/recall of a run against the sample set's ground truth, printed as a table.

    python examples/images/evaluate.py DATADIR OUTDIR     (DATADIR/ground_truth.json, OUTDIR/report.json)

report.json must carry `per_image` details, as examples/images/sequential.py writes them."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from imaging.evaluate import evaluate, table  # noqa: E402
from imaging.generate import TRUTH_FILE  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datadir", type=Path)
    parser.add_argument("outdir", type=Path)
    args = parser.parse_args(argv)
    truth = json.loads((args.datadir / TRUTH_FILE).read_text())
    report = json.loads((args.outdir / "report.json").read_text())
    print(table(evaluate(truth, report)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
