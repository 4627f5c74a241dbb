"""Sample data for the sign-up flow: one JSON object per line, one new user each.

    python examples/signup/generate.py OUT.jsonl [--count N] [--seed S]

Every address is fake on purpose: emails are under `example.test` (a TLD reserved by RFC 2606, so no mail can ever
leave for a real person) and phone numbers come from ranges reserved for fiction (Ofcom's drama numbers
+44 7700 900xxx, and North America's 555-01xx). The same seed always writes the same bytes.

The person's name is `full_name`, not `name`: the JSONL source names an item by its `name` field before `id`, and
the item's name is its identity in the pipeline (people's names are neither unique nor safe ids).
"""

from __future__ import annotations

import argparse
import json
import random
import unicodedata
from pathlib import Path
from typing import Any

FIRST = ["Ada", "Alan", "Grace", "Edsger", "Barbara", "Donald", "Frances", "John", "Margaret", "Ken", "Radia",
         "Tim", "Hedy", "Linus", "Karen", "Niklaus", "Sophie", "José", "Zoë", "Björn", "Amélie", "Chidi", "Mei",
         "Ravi", "Yuki", "Olu", "Ingrid", "Mateo", "Aroha", "Søren"]
LAST = ["Lovelace", "Turing", "Hopper", "Dijkstra", "Liskov", "Knuth", "Allen", "Backus", "Hamilton", "Thompson",
        "Perlman", "Berners-Lee", "Lamarr", "Torvalds", "Spärck Jones", "Wirth", "Wilson", "Núñez", "Öztürk",
        "Okafor", "Zhang", "Iyer", "Tanaka", "Adeyemi", "Lindqvist", "García", "Ngata", "Müller", "Kowalski", "Ito"]
US_AREA_CODES = [202, 212, 303, 312, 415, 503, 617, 702, 808, 919]
PROMO_RATE = 0.4  # share of users who opt in to promotions
SMS_RATE = 0.35  # share of users who prefer their welcome by SMS


def ascii_slug(text: str) -> str:
    """'Spärck Jones' -> 'sparck-jones': e-mail local parts stay plain ASCII."""
    flat = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "-".join("".join(c if c.isalnum() else " " for c in flat.lower()).split())


def fake_phone(rng: random.Random) -> str:
    """E.164, always inside a range reserved for fiction, so an SMS could never reach anyone."""
    if rng.random() < 0.5:
        return f"+447700900{rng.randrange(1000):03d}"
    return f"+1{rng.choice(US_AREA_CODES)}55501{rng.randrange(100):02d}"


def signups(count: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    width = max(5, len(str(count)))
    out = []
    for n in range(1, count + 1):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        out.append({
            "id": f"u{n:0{width}d}",
            "full_name": f"{first} {last}",
            # the number keeps addresses unique even when two users share a name
            "email": f"{ascii_slug(first)}.{ascii_slug(last)}.{n}@example.test",
            "phone": fake_phone(rng),
            "promo": rng.random() < PROMO_RATE,
            "channel": "sms" if rng.random() < SMS_RATE else "email",
        })
    return out


def write(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="JSONL file to write")
    parser.add_argument("--count", type=int, default=100, help="sign-ups to generate (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    if args.count < 0:
        parser.error("--count must be >= 0")
    rows = signups(args.count, args.seed)
    write(args.out, rows)
    promo = sum(r["promo"] for r in rows)
    sms = sum(r["channel"] == "sms" for r in rows)
    print(f"{args.out}: {len(rows)} sign-ups ({promo} opted in to promos, {sms} prefer SMS)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
