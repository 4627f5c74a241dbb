"""The sign-up flow's workers, registered in-process: send-verification, send-welcome-email, send-welcome-sms and
send-promo. Each gets the item document {"id", "name", "data": <sign-up>, ...} and sends one real message; the
user is `data.id` (the sign-up's own id, which the JSONL source also uses as the item id), greeted by
`data.full_name`.

Settings come from the environment, read on every call (the runtime's environment, or a test's):
SIGNUP_SMTP_HOST (127.0.0.1), SIGNUP_SMTP_PORT (8025), SIGNUP_WEBHOOK_URL (http://127.0.0.1:8026/sms) and
SIGNUP_SECRET (required by send-verification; the verification token is HMAC-SHA256(secret, id); never logged).

Idempotency, since the runtime is at-least-once: every message carries a Message-ID (SMS: Idempotency-Key)
derived from the user id and its purpose, so a resend is recognisably the same message; and once sent, the result
is written to `<output_dir>/<purpose>.sent.json` (the item's own directory, the same for every retry at a stage)
with the item's batch, so a retry in the same batch after a crash between sending and acknowledging does not send
again (the window left is between the server's 250 and that file's rename). A failure raises: the runtime
retries the item, then dead-letters it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import smtplib
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from batchmesh import worker

log = logging.getLogger("signup.workers")

SENDER = Address("batchmesh sign-up", "no-reply", "signup.example.test")
SITE = "https://signup.example.test"  # reserved TLD: the links in the mails lead nowhere real
ID_HEADER, KIND_HEADER = "X-Signup-Id", "X-Batchmesh-Kind"
TIMEOUT = 10.0  # seconds per SMTP/HTTP exchange: a hung sink fails the attempt instead of stalling the worker
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")


def smtp_address() -> tuple[str, int]:
    return os.environ.get("SIGNUP_SMTP_HOST", "127.0.0.1"), int(os.environ.get("SIGNUP_SMTP_PORT", "8025"))


def webhook_url() -> str:
    return os.environ.get("SIGNUP_WEBHOOK_URL", "http://127.0.0.1:8026/sms")


def message_id(purpose: str, user_id: str) -> str:
    """Stable per (purpose, user): every retry sends the same Message-ID. Odd ids are hashed to stay valid."""
    part = user_id if _SAFE_ID.match(user_id) else hashlib.sha256(user_id.encode()).hexdigest()[:24]
    return f"<{purpose}.{part}@signup.example.test>"


def verification_token(user_id: str) -> str:
    secret = os.environ.get("SIGNUP_SECRET")
    if not secret:
        raise RuntimeError("SIGNUP_SECRET is not set: it signs the verification links")
    return hmac.new(secret.encode(), user_id.encode(), hashlib.sha256).hexdigest()


def _field(data: dict[str, Any], name: str, pattern: re.Pattern[str] | None = None) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value or (pattern is not None and not pattern.match(value)):
        raise ValueError(f"sign-up has no valid {name!r}")
    return value


def _email(data: dict[str, Any]) -> str:
    address = _field(data, "email")
    if address.count("@") != 1:
        raise ValueError("sign-up has no valid 'email'")
    return address


def _ledger(output_dir: Path, purpose: str) -> Path:
    return output_dir / f"{purpose}.sent.json"


def _already_sent(output_dir: Path, purpose: str, item: dict[str, Any], mid: str) -> dict[str, Any] | None:
    """The result of an earlier attempt of this batch that got as far as sending, if any. A new batch (the next
    `batchmesh run`) sends again: the ledger is only there to make retries within a run harmless."""
    try:
        done = json.loads(_ledger(output_dir, purpose).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(done, dict) or done.get("batch") != item.get("batch"):
        return None
    result = done.get("result")
    return result if isinstance(result, dict) and result.get("message_id") == mid else None


def _mark_sent(output_dir: Path, purpose: str, item: dict[str, Any], result: dict[str, Any]) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = _ledger(output_dir, purpose).with_suffix(".tmp")
    tmp.write_text(json.dumps({"batch": item.get("batch"), "result": result}))
    tmp.replace(_ledger(output_dir, purpose))  # atomic: a crash leaves the old state or the new, never half


def user_id_of(item: dict[str, Any]) -> str:
    """The sign-up's id labels every message; the item id only if the sign-up has none."""
    value = item["data"].get("id")
    return value if isinstance(value, str) and value else str(item["id"])


def greeting_name(data: dict[str, Any]) -> str:
    return str(data.get("full_name") or "there")


def send_mail(item: dict[str, Any], output_dir: Path, *, kind: str, purpose: str, subject: str, text: str,
              extra_headers: dict[str, str] | None = None) -> dict[str, Any]:
    """Send one e-mail over SMTP unless this item's `purpose` was already sent; the result dict either way."""
    data, user_id = item["data"], user_id_of(item)
    to, mid = _email(data), message_id(purpose, user_id)
    if (done := _already_sent(output_dir, purpose, item, mid)) is not None:
        log.info("already sent, not sending again", extra={"event": "signup.skip", "item": user_id, "kind": kind})
        return done
    msg = EmailMessage()
    msg["From"] = SENDER
    msg["To"] = Address(str(data.get("full_name") or ""), addr_spec=to)
    msg["Subject"] = subject
    msg["Message-ID"] = mid
    msg["Date"] = formatdate(usegmt=True)
    msg[ID_HEADER] = user_id
    msg[KIND_HEADER] = kind
    for name, value in (extra_headers or {}).items():
        msg[name] = value
    msg.set_content(text)
    host, port = smtp_address()
    # local_hostname: otherwise smtplib resolves this machine's FQDN for EHLO, which can stall on DNS
    with smtplib.SMTP(host, port, timeout=TIMEOUT, local_hostname="localhost") as smtp:
        refused = smtp.send_message(msg)
    if refused:  # some recipients refused: with one recipient this is unreachable, but never report it as sent
        raise smtplib.SMTPRecipientsRefused(refused)
    result = {"kind": kind, "to": to, "message_id": mid}
    _mark_sent(output_dir, purpose, item, result)
    log.info("e-mail sent", extra={"event": "signup.sent", "item": user_id, "kind": kind, "message_id": mid})
    return result


@worker("send-verification")
def send_verification(item: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    """The result is the sign-up plus what was sent: downstream routers still see channel, promo, email, phone."""
    data, user_id = item["data"], user_id_of(item)
    link = f"{SITE}/verify?id={quote(user_id, safe='')}&token={verification_token(user_id)}"
    text = (f"Hi {greeting_name(data)},\n\nplease confirm your e-mail address by opening this link:\n\n"
            f"{link}\n\nIf you did not sign up, ignore this message.\n")
    sent = send_mail(item, output_dir, kind="verification", purpose="verification",
                     subject="Verify your account", text=text)
    return {**data, "verification": sent}


@worker("send-welcome-email")
def send_welcome_email(item: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    text = f"Hi {greeting_name(item['data'])},\n\nwelcome to batchmesh! Your account is ready.\n"
    return send_mail(item, output_dir, kind="welcome", purpose="welcome-email", subject="Welcome to batchmesh",
                     text=text)


@worker("send-promo")
def send_promo(item: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    data, user_id = item["data"], user_id_of(item)
    if data.get("promo") is not True:  # consent is checked here too, not only by the filter upstream
        raise ValueError("user did not opt in to promotions")
    unsubscribe = f"{SITE}/unsubscribe?id={quote(user_id, safe='')}"
    text = f"Hi {greeting_name(data)},\n\nyou asked for our offers: here is this month's.\n\n" \
           f"Unsubscribe: {unsubscribe}\n"
    return send_mail(item, output_dir, kind="promo", purpose="promo", subject="This month's offer",
                     text=text, extra_headers={"List-Unsubscribe": f"<{unsubscribe}>"})


@worker("send-welcome-sms")
def send_welcome_sms(item: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    """POST the SMS to the gateway webhook; Idempotency-Key lets a gateway drop a resend."""
    data, user_id = item["data"], user_id_of(item)
    to, mid = _field(data, "phone", _E164), message_id("welcome-sms", user_id)
    if (done := _already_sent(output_dir, "welcome-sms", item, mid)) is not None:
        log.info("already sent, not sending again", extra={"event": "signup.skip", "item": user_id,
                                                             "kind": "welcome"})
        return done
    first = greeting_name(data).split(" ")[0]
    body = {"to": to, "text": f"Welcome to batchmesh, {first}!", "signup_id": user_id, "kind": "welcome",
            "message_id": mid}
    response = httpx.post(webhook_url(), json=body, headers={"Idempotency-Key": mid}, timeout=TIMEOUT)
    response.raise_for_status()
    result = {"kind": "welcome", "to": to, "message_id": mid}
    _mark_sent(output_dir, "welcome-sms", item, result)
    log.info("SMS sent", extra={"event": "signup.sent", "item": user_id, "kind": "welcome", "message_id": mid})
    return result
