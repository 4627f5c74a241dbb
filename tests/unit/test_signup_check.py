"""check.py against real recordings: a clean run of the flow (the workers called in the pipeline's order, routing
done here as the routers would) passes; each kind of broken promise, injected as a real message, is caught."""

from __future__ import annotations

import json
import os
import shutil
import smtplib
from collections.abc import Iterator
from email.message import EmailMessage
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from example_modules import load_example

load = partial(load_example, "signup")


generate, sinks, workers, check = load("generate"), load("sinks"), load("workers"), load("check")
Users = list[dict[str, Any]]


def doc(data: dict[str, Any]) -> dict[str, Any]:
    return {"id": data["id"], "name": data["id"], "data": data, "version": None, "batch": "b1", "attempt": 1}


def flow(user: dict[str, Any], out: Path) -> None:
    """One user through the pipeline: verify, then welcome by channel (split) and promo if opted in (filter),
    both deciding on the verification's result, as the routers downstream of it do."""
    verified = workers.send_verification(doc(user), out / "verify" / user["id"])
    assert {k: verified[k] for k in user} == user
    if verified["channel"] == "sms":
        workers.send_welcome_sms(doc(verified), out / "welcome-sms" / user["id"])
    else:
        workers.send_welcome_email(doc(verified), out / "welcome-email" / user["id"])
    if verified["promo"]:
        workers.send_promo(doc(verified), out / "promo-email" / user["id"])


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Users]:
    users = generate.signups(40, seed=5)
    record, out = tmp_path_factory.mktemp("clean"), tmp_path_factory.mktemp("out")
    with sinks.running_sinks(record) as ports, pytest.MonkeyPatch.context() as mp:
        for key, value in {**sinks.worker_env(ports), "SIGNUP_SECRET": "s"}.items():
            mp.setenv(key, value)
        for user in users:
            flow(user, out)
    return record, users


@pytest.fixture
def tamper(clean: tuple[Path, Users], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Users]]:
    """A copy of the clean recording, with the sinks running again (appending) to receive injected messages."""
    record = tmp_path / "record"
    shutil.copytree(clean[0], record)
    with sinks.running_sinks(record, append=True) as ports:
        for key, value in {**sinks.worker_env(ports), "SIGNUP_SECRET": "s"}.items():
            monkeypatch.setenv(key, value)
        yield record, clean[1]


def pick(users: Users, **where: Any) -> dict[str, Any]:
    return next(u for u in users if all(u[k] == v for k, v in where.items()))


def test_a_clean_run_passes(clean: tuple[Path, Users]) -> None:
    record, users = clean
    assert check.check(record, users) == []
    report = check.summary(record, users)
    assert report["delivered"] == report["expected"] and report["resends"] == report["unknown_users"] == 0
    assert report["expected"]["welcome/sms"] > 0 and report["expected"]["promo/email"] > 0


def test_duplicate_verification(tamper: tuple[Path, Users], tmp_path: Path) -> None:
    record, users = tamper
    user = users[0]
    workers.send_mail(doc(user), tmp_path, kind="verification", purpose="verify-again", subject="Verify", text="x")
    assert check.check(record, users) == [f"{user['id']}: 2 verification e-mail(s), expected 1 (duplicate)"]


def test_resend_of_the_same_message(tamper: tuple[Path, Users], tmp_path: Path) -> None:
    record, users = tamper
    workers.send_verification(doc(users[1]), tmp_path / "no-ledger")  # as if the ledger were lost
    mid = f"<verification.{users[1]['id']}@signup.example.test>"
    assert check.check(record, users) == [f"{mid}: received 2 times (resent)"]
    assert check.check(record, users, allow_resends=True) == []


def test_missing_welcome(tamper: tuple[Path, Users], tmp_path: Path) -> None:
    record, users = tamper
    late = {"id": "u99999", "full_name": "Late Comer", "email": "late@example.test", "phone": "+447700900999",
            "promo": False, "channel": "email"}
    workers.send_verification(doc(late), tmp_path)  # verified, then lost before the welcome
    assert check.check(record, [*users, late]) == ["u99999: 0 welcome e-mail(s), expected 1 (missing)"]


def test_promo_to_a_user_who_did_not_opt_in(tamper: tuple[Path, Users], tmp_path: Path) -> None:
    record, users = tamper
    user = pick(users, promo=False)
    workers.send_mail(doc(user), tmp_path, kind="promo", purpose="promo", subject="Offer", text="x")
    assert check.check(record, users) == [f"{user['id']}: 1 promo e-mail(s), expected 0 (not expected)"]


def test_welcome_by_both_channels(tamper: tuple[Path, Users], tmp_path: Path) -> None:
    record, users = tamper
    user = pick(users, channel="email")
    workers.send_welcome_sms(doc(user), tmp_path)
    assert check.check(record, users) == [f"{user['id']}: 1 welcome SMS(s), expected 0 (not expected)"]


def test_strangers_and_unlabelled_mail(tamper: tuple[Path, Users], tmp_path: Path) -> None:
    record, users = tamper
    workers.send_welcome_email(doc({**users[0], "id": "u77777"}), tmp_path)
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "x@example.test", "y@example.test", "no labels"
    msg.set_content("x")
    port = int(os.environ["SIGNUP_SMTP_PORT"])  # the tamper fixture's sink
    with smtplib.SMTP("127.0.0.1", port, timeout=5, local_hostname="localhost") as smtp:
        smtp.send_message(msg)
    violations = check.check(record, users)
    assert violations[0].startswith("smtp.jsonl:") and "unlabelled" in violations[0]
    assert violations[1:] == ["u77777: welcome email for a user not in the input"]
    assert check.summary(record, users)["unknown_users"] == 1


def test_unreadable_lines(clean: tuple[Path, Users], tmp_path: Path) -> None:
    record, users = clean
    shutil.copytree(record, tmp_path / "r")
    with (tmp_path / "r" / check.WEBHOOK_RECORD).open("a") as f:
        f.write('not json\n{"body": {"signup_id": "u1"')  # the last line is still being written: skipped
    lines = len((record / check.WEBHOOK_RECORD).read_text().splitlines())
    assert check.check(tmp_path / "r", users) == [f"{check.WEBHOOK_RECORD}:{lines + 1}: not JSON"]
    assert "no recording" in check.check(tmp_path / "missing", users)[0]


def test_cli_exit_codes(clean: tuple[Path, Users], tamper: tuple[Path, Users], tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    signups = tmp_path / "signups.jsonl"
    signups.write_text("".join(json.dumps(u) + "\n" for u in clean[1]))
    assert check.main(["--record", str(clean[0]), "--input", str(signups)]) == 0
    assert "OK: every promise kept" in capsys.readouterr().out
    workers.send_promo(doc(pick(clean[1], promo=True)), tmp_path / "again")  # a resend
    assert check.main(["--record", str(tamper[0]), "--input", str(signups)]) == 1
    out = capsys.readouterr().out
    assert "VIOLATION" in out and "FAILED: 1 violation(s)" in out
    assert check.main(["--record", str(tamper[0]), "--input", str(signups), "--allow-resends"]) == 0
    assert check.main(["--record", str(clean[0]), "--input", str(tmp_path / "nope.jsonl")]) == 2
