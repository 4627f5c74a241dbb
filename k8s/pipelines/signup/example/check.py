"""Check the sign-up flow's promises from what the sinks recorded (see sinks.py), independently of batchmesh:

- every user got exactly one verification e-mail, at their address;
- every user got exactly one welcome, by the channel they prefer (SMS if "sms", else e-mail), never both;
- exactly the users who opted in got the promo e-mail, once;
- nothing went to anyone else, and nothing arrived unlabelled.

    python examples/signup/check.py --record DIR --input signups.jsonl [--allow-resends]

A message counts once per Message-ID (SMS: message_id). The same Message-ID received twice is a resend (the
at-least-once window: sent, then crashed before the worker recorded it) and is a violation too, unless
--allow-resends. Exit status: 0 all good, 1 violations, 2 unreadable input.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SMTP_RECORD, WEBHOOK_RECORD = "smtp.jsonl", "webhook.jsonl"  # the file names sinks.py writes
KINDS = ("verification", "welcome", "promo")
SHOW = 50  # violations printed by the CLI; the count is always complete


@dataclass
class Tally:
    """Distinct message ids per (user, kind, channel), the address each went to, and resends."""

    sent: dict[tuple[str, str, str], set[str]] = field(default_factory=lambda: defaultdict(set))
    to: dict[tuple[str, str, str], set[str]] = field(default_factory=lambda: defaultdict(set))
    received: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def add(self, user: Any, kind: Any, channel: str, mid: Any, to: str, where: str) -> None:
        if not isinstance(user, str) or not user or kind not in KINDS or not isinstance(mid, str) or not mid:
            self.problems.append(f"{where}: unlabelled message (signup id {user!r}, kind {kind!r}, id {mid!r})")
            return
        self.sent[user, kind, channel].add(mid)
        self.to[user, kind, channel].add(to)
        self.received[mid] += 1


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Records and problems; a last line without its newline is still being written and is skipped."""
    if not path.exists():
        return [], [f"{path}: no recording (were the sinks started with this --record directory?)"]
    records, problems = [], []
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    for n, line in enumerate(lines[:-1] if not text.endswith("\n") else lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            problems.append(f"{path.name}:{n}: not JSON")
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            problems.append(f"{path.name}:{n}: not an object")
    return records, problems


def tally(record_dir: Path) -> Tally:
    t = Tally()
    mails, problems = read_jsonl(record_dir / SMTP_RECORD)
    texts, more = read_jsonl(record_dir / WEBHOOK_RECORD)
    t.problems += problems + more
    for n, m in enumerate(mails, 1):
        headers = {k.lower(): v for k, v in (m.get("headers") or {}).items()}
        to = ",".join(sorted(str(a).lower() for a in m.get("to") or []))
        t.add(headers.get("x-signup-id"), headers.get("x-batchmesh-kind"), "email", m.get("message_id"), to,
              f"{SMTP_RECORD}:{n}")
    for n, r in enumerate(texts, 1):
        body = r.get("body") or {}
        t.add(body.get("signup_id"), body.get("kind"), "sms", body.get("message_id"), str(body.get("to")),
              f"{WEBHOOK_RECORD}:{n}")
    return t


def _expect(t: Tally, user: str, kind: str, channel: str, want: int, address: str) -> list[str]:
    got = len(t.sent.get((user, kind, channel), ()))
    label = f"{kind} {'e-mail' if channel == 'email' else 'SMS'}"
    if got != want:
        reason = "missing" if got < want else ("not expected" if want == 0 else "duplicate")
        return [f"{user}: {got} {label}(s), expected {want} ({reason})"]
    wrong = {a for a in t.to.get((user, kind, channel), ()) if a != address.lower()}
    return [f"{user}: {label} sent to {a!r}, not {address!r}" for a in sorted(wrong)]


def check(record_dir: str | Path, signups: Iterable[dict[str, Any]], allow_resends: bool = False) -> list[str]:
    """Every violation of the flow's promises found in the recordings, as one line each (empty: all good)."""
    t = tally(Path(record_dir))
    violations = list(t.problems)
    users: set[str] = set()
    for s in signups:
        user = str(s["id"])
        users.add(user)
        sms = s.get("channel") == "sms"
        email, phone = str(s.get("email")), str(s.get("phone"))
        violations += _expect(t, user, "verification", "email", 1, email)
        violations += _expect(t, user, "welcome", "email", 0 if sms else 1, email)
        violations += _expect(t, user, "welcome", "sms", 1 if sms else 0, phone)
        violations += _expect(t, user, "promo", "email", 1 if s.get("promo") is True else 0, email)
    for user, kind, channel in sorted(t.sent):
        if user not in users:
            violations.append(f"{user}: {kind} {channel} for a user not in the input")
        elif (kind, channel) not in {("verification", "email"), ("welcome", "email"), ("welcome", "sms"),
                                     ("promo", "email")}:
            violations.append(f"{user}: {kind} sent by {channel}, which the flow never does")
    if not allow_resends:
        violations += [f"{mid}: received {n} times (resent)" for mid, n in sorted(t.received.items()) if n > 1]
    return violations


def summary(record_dir: str | Path, signups: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts for the report: expected vs delivered (distinct) per kind and channel, resends, and how many user
    ids in the recordings are not in the input (delivered counts include their messages)."""
    t = tally(Path(record_dir))
    delivered: Counter[str] = Counter()
    for (_, kind, channel), mids in t.sent.items():
        delivered[f"{kind}/{channel}"] += len(mids)
    sms = sum(s.get("channel") == "sms" for s in signups)
    expected = {"verification/email": len(signups), "welcome/email": len(signups) - sms, "welcome/sms": sms,
                "promo/email": sum(s.get("promo") is True for s in signups)}
    known = {str(s["id"]) for s in signups}
    return {"users": len(signups), "expected": expected, "delivered": {k: delivered[k] for k in expected},
            "resends": sum(n - 1 for n in t.received.values()),
            "unknown_users": len({user for user, _, _ in t.sent if user not in known})}


def load_signups(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--record", type=Path, required=True, help="the sinks' --record directory")
    parser.add_argument("--input", type=Path, required=True, help="the sign-ups JSONL the pipeline ran on")
    parser.add_argument("--allow-resends", action="store_true", help="a resend of the same Message-ID is fine")
    args = parser.parse_args(argv)
    try:
        signups = load_signups(args.input)
    except (OSError, ValueError) as exc:
        print(f"check: cannot read {args.input}: {exc}")
        return 2
    report = summary(args.record, signups)
    print(f"{report['users']} users, {report['resends']} resends")
    for key, want in report["expected"].items():
        got = report["delivered"][key]
        print(f"  {key:<20} {got:>6} delivered / {want:>6} expected{'' if got == want else '   <-- mismatch'}")
    violations = check(args.record, signups, allow_resends=args.allow_resends)
    if report["unknown_users"]:
        print(f"  messages for {report['unknown_users']} user id(s) not in the input (labelled with another id?)")
    for line in violations[:SHOW]:
        print(f"  VIOLATION {line}")
    if len(violations) > SHOW:
        print(f"  ... and {len(violations) - SHOW} more")
    print("OK: every promise kept" if not violations else f"FAILED: {len(violations)} violation(s)")
    return 1 if violations else 0


if __name__ == "__main__":
    raise SystemExit(main())
