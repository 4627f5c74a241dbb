"""The sign-up example's sinks: a real SMTP server and an HTTP webhook on loopback, recording what they receive
so another process can count it."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from email.message import EmailMessage
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from example_modules import load_example

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "signup"


load = partial(load_example, "signup")


sinks = load("sinks")


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[Path, Any]]:
    with sinks.running_sinks(tmp_path) as ports:
        yield tmp_path, ports


def mail(to: str, **headers: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "me@example.test", to, "Hellø"
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content("body text\n")
    return msg


def test_smtp_records_each_real_message(running: tuple[Path, Any]) -> None:
    record, ports = running
    with smtplib.SMTP("127.0.0.1", ports.smtp, timeout=5, local_hostname="localhost") as smtp:
        for i in range(3):
            smtp.send_message(mail(f"user{i}@example.test", Message_ID=f"<m{i}@example.test>", X_Signup_Id=f"u{i}",
                                   X_Batchmesh_Kind="verification"))
    got = records(record / sinks.SMTP_RECORD)
    assert [r["to"] for r in got] == [["user0@example.test"], ["user1@example.test"], ["user2@example.test"]]
    first = got[0]
    assert first["from"] == "me@example.test" and first["subject"] == "Hellø"  # RFC 2047 decoded
    assert first["message_id"] == "<m0@example.test>" and first["body"] == "body text\n"
    assert first["headers"]["X-Signup-Id"] == "u0" and first["headers"]["X-Batchmesh-Kind"] == "verification"


def test_smtp_refuses_recipients_outside_test_tld(running: tuple[Path, Any]) -> None:
    record, ports = running
    with smtplib.SMTP("127.0.0.1", ports.smtp, timeout=5, local_hostname="localhost") as smtp:
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            smtp.send_message(mail("someone@example.com"))
    assert records(record / sinks.SMTP_RECORD) == []


def test_webhook_records_json_posts(running: tuple[Path, Any]) -> None:
    record, ports = running
    url = f"http://127.0.0.1:{ports.webhook}{sinks.SMS_PATH}"
    r = httpx.post(url, json={"to": "+447700900123", "text": "hi"}, headers={"Idempotency-Key": "k1"}, timeout=5)
    assert r.status_code == 202 and r.json() == {"accepted": True}
    assert httpx.post(url, content=b"not json", timeout=5).status_code == 400
    assert httpx.post(url, json=[1, 2], timeout=5).status_code == 400
    assert httpx.post(f"http://127.0.0.1:{ports.webhook}/other", json={}, timeout=5).status_code == 404
    assert httpx.get(f"http://127.0.0.1:{ports.webhook}/healthz", timeout=5).status_code == 200
    got = records(record / sinks.WEBHOOK_RECORD)
    assert len(got) == 1
    assert got[0]["body"] == {"to": "+447700900123", "text": "hi"} and got[0]["idempotency_key"] == "k1"


def test_each_start_truncates_the_recording(tmp_path: Path) -> None:
    (tmp_path / sinks.SMTP_RECORD).write_text('{"old": true}\n')
    with sinks.running_sinks(tmp_path):
        assert (tmp_path / sinks.SMTP_RECORD).read_text() == ""
    (tmp_path / sinks.SMTP_RECORD).write_text('{"old": true}\n')
    with sinks.running_sinks(tmp_path, append=True):
        assert (tmp_path / sinks.SMTP_RECORD).read_text() == '{"old": true}\n'


def test_cli_serves_until_sigterm(tmp_path: Path) -> None:
    smtp_port, webhook_port = sinks.free_port(), sinks.free_port()
    proc = subprocess.Popen([sys.executable, str(EXAMPLE / "sinks.py"), "--smtp-port", str(smtp_port),
                             "--webhook-port", str(webhook_port), "--record", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=os.environ.copy())
    try:
        assert proc.stdout is not None
        exports = dict(proc.stdout.readline().split(" ", 1)[1].strip().split("=", 1) for _ in range(3))
        assert exports == {"SIGNUP_SMTP_HOST": "127.0.0.1", "SIGNUP_SMTP_PORT": str(smtp_port),
                           "SIGNUP_WEBHOOK_URL": f"http://127.0.0.1:{webhook_port}/sms"}
        httpx.post(exports["SIGNUP_WEBHOOK_URL"], json={"n": 1}, timeout=5).raise_for_status()
        assert len(records(tmp_path / sinks.WEBHOOK_RECORD)) == 1  # visible to another process right away
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
