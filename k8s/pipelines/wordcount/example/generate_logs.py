"""Access logs for the log-processing variant: combined-format lines (nginx/Apache), realistic paths (some with
query strings), methods, status codes and sizes ("-" when nothing was sent), and a few malformed lines: garbage,
truncated writes, binary noise, a request line nginx could not parse. Deterministic by seed. No network.

    python examples/wordcount/generate_logs.py data/logs --files 50 --seed 1
"""

from __future__ import annotations

import argparse
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

PATHS = ["/", "/index.html", "/login", "/logout", "/api/v1/items", "/api/v1/items/42", "/api/v1/items/7/thumbnail",
         "/static/app.js", "/static/style.css", "/images/logo.png", "/search?q=redis", "/search?q=streams&page=2",
         "/favicon.ico", "/robots.txt", "/admin", "/wp-login.php", "/.env", "/api/v1/status", "/caf%C3%A9/menu"]
PATH_WEIGHTS = [30, 20, 8, 3, 15, 6, 4, 18, 18, 12, 5, 3, 10, 2, 1, 2, 1, 6, 1]
STATUSES = ["200"] * 30 + ["304"] * 5 + ["201", "204", "301", "302", "400", "401", "403", "404", "404", "404",
                                          "499", "500", "502", "503"]
AGENTS = ["Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0", "curl/8.5.0",
          "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", "python-httpx/0.27.0", "-"]
REFERERS = ["-", "-", "https://example.test/", "https://example.test/search?q=batch"]
MALFORMED = ["garbage line without structure", "\x00\x01\x02 binary noise \x85\u2028 with odd line breaks",
             '10.0.0.1 - - [bad date] "GET', '10.1.2.3 - - [01/Nov/2026:00:00:01 +0000] "-" 400 0 "-" "-"',
             '10.1.2.3 - - [01/Nov/2026:00:00:02 +0000] "GET /index.html HTTP/1.1" 2OO 512 "-" "-"']


def line(rng: random.Random, when: datetime) -> str:
    ip = f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    user = "-" if rng.random() < 0.97 else "alice"
    method = rng.choice(["GET"] * 8 + ["POST", "HEAD", "PUT", "DELETE"])
    path = rng.choices(PATHS, weights=PATH_WEIGHTS)[0]
    status = rng.choice(STATUSES)
    size = "-" if status in ("204", "304") or rng.random() < 0.02 else str(rng.randint(0, 50_000))
    stamp = when.strftime("%d/%b/%Y:%H:%M:%S +0000")
    return (f'{ip} - {user} [{stamp}] "{method} {path} HTTP/{rng.choice(["1.1", "1.1", "2.0"])}" {status} {size} '
            f'"{rng.choice(REFERERS)}" "{rng.choice(AGENTS)}"')


def malformed(rng: random.Random, good: str) -> str:
    if rng.random() < 0.3:
        return good[:rng.randrange(1, len(good) // 2)]  # a write cut short (disk full, log rotation)
    return rng.choice(MALFORMED)


def log_text(rng: random.Random, start: datetime) -> str:
    lines = [line(rng, start + timedelta(seconds=k)) for k in range(rng.randint(50, 400))]
    for _ in range(rng.randint(0, 3)):
        lines.insert(rng.randrange(len(lines) + 1), malformed(rng, rng.choice(lines)))
    if rng.random() < 0.1:
        lines.insert(rng.randrange(len(lines) + 1), "")  # a blank line: neither a request nor malformed
    return "\n".join(lines) + "\n"


def generate(root: Path, files: int, seed: int) -> list[Path]:
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    start = datetime(2026, 11, 1, tzinfo=UTC)
    paths = []
    for i in range(files):
        path = root / f"access-{i:03d}.log"
        path.write_text(log_text(rng, start + timedelta(hours=i)), encoding="utf-8")
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--files", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    paths = generate(args.dir, args.files, args.seed)
    print(f"{len(paths)} logs in {args.dir}")


if __name__ == "__main__":
    main()
