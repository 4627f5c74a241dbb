"""The sign-up workers, called directly with an item document, against the real sinks: what arrives, the
verification token, idempotency (Message-ID and the per-item ledger), and failures that raise (so are retried)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from example_modules import load_example

from services.core.item import WorkItem
from services.workers import resolve
from services.workers.adapters import FunctionAdapter

SECRET = "test-secret-0123456789"  # noqa: S105 - a test value, signs nothing real


load = partial(load_example, "signup")


sinks, workers = load("sinks"), load("workers")
USER = {"id": "u00042", "full_name": "Zoë Müller", "email": "zoe.muller.42@example.test", "phone": "+447700900042",
        "promo": True, "channel": "sms"}


def doc(data: dict[str, Any] | None = None, batch: str | None = "b1") -> dict[str, Any]:
    data = data or USER
    return {"id": data["id"], "name": data["id"], "data": data, "version": None, "batch": batch, "attempt": 1}


def mails(record: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (record / sinks.SMTP_RECORD).read_text().splitlines()]


def posts(record: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (record / sinks.WEBHOOK_RECORD).read_text().splitlines()]


@pytest.fixture
def record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    with sinks.running_sinks(tmp_path / "record") as ports:
        for key, value in sinks.worker_env(ports).items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("SIGNUP_SECRET", SECRET)
        yield tmp_path / "record"


def test_names_are_registered() -> None:
    for name in ("send-verification", "send-welcome-email", "send-welcome-sms", "send-promo"):
        assert resolve(name).__module__ == workers.__name__


def test_verification_mail_and_result(record: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    result = workers.send_verification(doc(), tmp_path / "out")
    mid = "<verification.u00042@signup.example.test>"
    # the sign-up travels on, so the routers downstream still see channel, promo, email and phone
    assert result == {**USER, "verification": {"kind": "verification", "to": USER["email"], "message_id": mid}}
    [m] = mails(record)
    assert m["to"] == [USER["email"]] and m["subject"] == "Verify your account" and m["message_id"] == mid
    assert m["headers"]["X-Signup-Id"] == "u00042" and m["headers"]["X-Batchmesh-Kind"] == "verification"
    assert m["headers"]["To"] == "Zoë Müller <zoe.muller.42@example.test>"
    token = hmac.new(SECRET.encode(), b"u00042", hashlib.sha256).hexdigest()
    assert f"https://signup.example.test/verify?id=u00042&token={token}" in m["body"]
    assert SECRET not in caplog.text and token not in caplog.text and token not in json.dumps(result)


def test_a_retry_in_the_same_batch_does_not_resend(record: Path, tmp_path: Path) -> None:
    first = workers.send_verification(doc(), tmp_path / "out")
    assert workers.send_verification(doc(), tmp_path / "out") == first  # crashed before the ack: retried
    assert len(mails(record)) == 1
    workers.send_verification(doc(batch="b2"), tmp_path / "out")  # the next run sends again, same Message-ID
    assert [m["message_id"] for m in mails(record)] == [first["verification"]["message_id"]] * 2


def test_welcome_email_and_promo(record: Path, tmp_path: Path) -> None:
    welcome = workers.send_welcome_email(doc(), tmp_path / "w")
    promo = workers.send_promo(doc(), tmp_path / "p")
    mid = "<welcome-email.u00042@signup.example.test>"
    assert welcome == {"kind": "welcome", "to": USER["email"], "message_id": mid}
    assert promo == {"kind": "promo", "to": USER["email"], "message_id": "<promo.u00042@signup.example.test>"}
    kinds = [(m["headers"]["X-Batchmesh-Kind"], m["headers"]["X-Signup-Id"]) for m in mails(record)]
    assert kinds == [("welcome", "u00042"), ("promo", "u00042")]
    assert mails(record)[1]["headers"]["List-Unsubscribe"].startswith("<https://signup.example.test/unsubscribe")


def test_promo_refuses_a_user_who_did_not_opt_in(record: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="opt in"):
        workers.send_promo(doc({**USER, "promo": False}), tmp_path)
    assert mails(record) == []


def test_welcome_sms_posts_to_the_webhook(record: Path, tmp_path: Path) -> None:
    result = workers.send_welcome_sms(doc(), tmp_path)
    mid = "<welcome-sms.u00042@signup.example.test>"
    assert result == {"kind": "welcome", "to": USER["phone"], "message_id": mid}
    [p] = posts(record)
    assert p["idempotency_key"] == mid
    assert p["body"] == {"to": USER["phone"], "text": "Welcome to batchmesh, Zoë!", "signup_id": "u00042",
                         "kind": "welcome", "message_id": mid}
    workers.send_welcome_sms(doc(), tmp_path)
    assert len(posts(record)) == 1


@pytest.mark.parametrize("bad", [{"phone": "07700 900042"}, {"phone": None}])
def test_welcome_sms_needs_an_e164_phone(record: Path, tmp_path: Path, bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="phone"):
        workers.send_welcome_sms(doc({**USER, **bad}), tmp_path)


def test_failures_raise(record: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="email"):
        workers.send_welcome_email(doc({**USER, "email": "nobody"}), tmp_path)
    with pytest.raises(Exception, match="550"):  # the sink refuses real-looking domains
        workers.send_welcome_email(doc({**USER, "email": "a@example.com"}), tmp_path)
    monkeypatch.delenv("SIGNUP_SECRET")
    with pytest.raises(RuntimeError, match="SIGNUP_SECRET"):
        workers.send_verification(doc(), tmp_path)
    monkeypatch.setenv("SIGNUP_SMTP_PORT", str(sinks.free_port()))  # nothing listens: connection refused
    with pytest.raises(OSError):
        workers.send_welcome_email(doc(), tmp_path)
    monkeypatch.setenv("SIGNUP_WEBHOOK_URL", f"http://127.0.0.1:{sinks.free_port()}/sms")
    with pytest.raises(Exception, match="[Cc]onnect"):
        workers.send_welcome_sms(doc(), tmp_path)
    assert mails(record) == [] and posts(record) == []
    assert not list(tmp_path.glob("*.sent.json"))  # nothing marked sent: a retry will try again


def test_messages_are_labelled_with_the_signup_id(record: Path, tmp_path: Path) -> None:
    """Whatever the source named the item, the user is the sign-up's own id."""
    workers.send_welcome_email({**doc(), "id": "Zoë Müller", "name": "Zoë Müller"}, tmp_path)
    [m] = mails(record)
    assert m["headers"]["X-Signup-Id"] == "u00042" and m["message_id"] == "<welcome-email.u00042@signup.example.test>"


def test_odd_ids_still_make_a_valid_message_id() -> None:
    assert re.fullmatch(r"<promo\.[0-9a-f]{24}@signup\.example\.test>", workers.message_id("promo", "a b/<c>"))


def test_runs_under_the_runtime_adapter(record: Path, tmp_path: Path) -> None:
    """The same path the stream worker takes: a WorkItem through FunctionAdapter; failures become outcomes."""
    adapter = FunctionAdapter(resolve("send-verification"), "send-verification")
    outcome = adapter.run(WorkItem(id="u00042", data=USER, batch="b9"), tmp_path / "u00042")
    assert outcome.ok and outcome.result is not None and outcome.result["channel"] == "sms"
    failed = adapter.run(WorkItem(id="u7", data={"id": "u7"}, batch="b9"), tmp_path / "u7")
    assert not failed.ok and "email" in failed.reason
