"""The sign-up generator: deterministic per seed, and every address fake (reserved TLD and phone ranges)."""

from __future__ import annotations

import json
import re
from functools import partial
from pathlib import Path

from example_modules import load_example

load = partial(load_example, "signup")


generate = load("generate")
RESERVED_PHONE = re.compile(r"^\+(447700900\d{3}|1\d{3}55501\d{2})$")  # Ofcom drama numbers, NANP 555-01xx


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    assert generate.main([str(a), "--count", "50", "--seed", "7"]) == 0
    assert generate.main([str(b), "--count", "50", "--seed", "7"]) == 0
    assert generate.main([str(c), "--count", "50", "--seed", "8"]) == 0
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_fields_are_complete_and_fake() -> None:
    rows = generate.signups(500, seed=1)
    assert [r["id"] for r in rows][:2] == ["u00001", "u00002"]
    assert len({r["id"] for r in rows}) == len({r["email"] for r in rows}) == 500
    for r in rows:
        assert set(r) == {"id", "full_name", "email", "phone", "promo", "channel"}
        assert re.fullmatch(r"[a-z0-9.-]+@example\.test", r["email"]), r["email"]
        assert RESERVED_PHONE.match(r["phone"]), r["phone"]
        assert isinstance(r["promo"], bool) and r["channel"] in ("email", "sms") and r["full_name"].strip()
    # both sides of each choice are well represented, so the flow's every branch gets traffic
    assert 150 < sum(r["promo"] for r in rows) < 250
    assert 120 < sum(r["channel"] == "sms" for r in rows) < 230


def test_jsonl_round_trips_unicode_names(tmp_path: Path) -> None:
    out = tmp_path / "s.jsonl"
    generate.main([str(out), "--count", "200", "--seed", "3"])
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert rows == generate.signups(200, seed=3)
    assert any(not r["full_name"].isascii() for r in rows)  # names like "Zoë Müller" exercise header encoding
    assert all(r["email"].isascii() for r in rows)


def test_ids_widen_past_five_digits() -> None:
    assert generate.signups(123_456, seed=0)[-1]["id"] == "u123456"


def test_the_jsonl_source_names_items_by_the_signup_id(tmp_path: Path) -> None:
    """The JSONL backend names an item by `name` before `id`: the generator must not write a `name`, or people's
    names (neither unique nor ids) would become the items' identities and users sharing a name would be lost."""
    from services.source.backends.jsonl import JsonlBackend

    out = tmp_path / "s.jsonl"
    generate.main([str(out), "--count", "300", "--seed", "2"])
    items, cursor = JsonlBackend(out).list(1000)
    assert cursor is None
    assert [i["name"] for i in items] == [r["id"] for r in generate.signups(300, seed=2)]
