"""Access logs for the log-processing variant: combined-format lines (nginx/Apache), realistic paths, status
codes and sizes, and a few malformed lines.

    python examples/wordcount/generate_logs.py data/logs --files 50 --seed 1
"""

from __future__ import annotations

import argparse
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

PATHS = ["/", "/index.html", "/login", "/logout", "/api/v1/items", "/api/v1/items/42", "/static/app.js",
         "/static/style.css", "/images/logo.png", "/search?q=redis", "/search?q=streams", "/favicon.ico",
         "/admin", "/wp-login.php", "/api/v1/status"]
STATUSES = ["200"] * 30 + ["304"] * 5 + ["301", "302", "400", "401", "403", "404", "404", "404", "500", "502", "503"]
AGENTS = ["Mozilla/5.0 (X11; Linux x86_64)", "curl/8.5.0", "Googlebot/2.1", "python-httpx/0.27"]
MALFORMED = ["", "garbage line without structure", '10.0.0.1 - - [bad date] "GET', "\x00\x01 binary noise"]


def line(rng: random.Random, when: datetime) -> str:
    ip = f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    method = rng.choice(["GET"] * 8 + ["POST", "HEAD"])
    status = rng.choice(STATUSES)
    size = "-" if status in ("304", "301") or rng.random() < 0.02 else str(rng.randint(0, 50_000))
    stamp = when.strftime("%d/%b/%Y:%H:%M:%S +0000")
    return (f'{ip} - - [{stamp}] "{method} {rng.choice(PATHS)} HTTP/1.1" {status} {size} '
            f'"-" "{rng.choice(AGENTS)}"')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--files", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    args.dir.mkdir(parents=True, exist_ok=True)
    start = datetime(2026, 11, 1, tzinfo=UTC)
    for i in range(args.files):
        lines = [line(rng, start + timedelta(seconds=i * 3600 + k)) for k in range(rng.randint(50, 400))]
        for _ in range(rng.randint(0, 3)):
            lines.insert(rng.randrange(len(lines) + 1), rng.choice(MALFORMED))
        (args.dir / f"access-{i:03d}.log").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{args.files} logs in {args.dir}")


if __name__ == "__main__":
    main()
