"""Sample data for the image pipeline: highway scenes with known vehicles, plates and faces, plus real photos.

    python examples/images/generate.py OUTDIR [--count 24] [--seed 7]

Writes OUTDIR/*.jpg and OUTDIR/ground_truth.json. Same seed, same bytes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from imaging.generate import generate  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--count", type=int, default=24)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    truth = generate(args.outdir, args.count, args.seed)
    vehicles = sum(len(t["vehicles"]) for t in truth["images"].values())
    faces = sum(len(t["faces"]) for t in truth["images"].values())
    print(f"{args.count} images, {vehicles} vehicles, {faces} faces -> {args.outdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
