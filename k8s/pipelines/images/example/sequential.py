"""The image pipeline's algorithms as a plain sequential script: the baseline the mesh is measured against.

    python examples/images/sequential.py INDIR OUTDIR

Writes OUTDIR/report.json (counts per class, colour histogram, faces; per-image details), OUTDIR/colours.png and
OUTDIR/blurred/*.png (plates and faces anonymised). One process, OpenCV single-threaded (IMAGING_CV_THREADS)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1])]  # the example's package, and batchmesh's (worker registry)

from imaging.sequential import run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("indir", type=Path)
    parser.add_argument("outdir", type=Path)
    args = parser.parse_args(argv)
    report = run(args.indir, args.outdir)
    summary = {k: report[k] for k in ("images", "vehicles", "plates", "counts", "colours", "faces", "seconds")}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
