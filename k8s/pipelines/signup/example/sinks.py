"""The local servers the sign-up example sends to, each recording what it received to a JSONL file so the counts
can be checked from another process (check.py):

- a real SMTP server (aiosmtpd) -> `<record dir>/smtp.jsonl`, one line per message accepted;
- an HTTP webhook standing in for an SMS gateway -> `<record dir>/webhook.jsonl`, one line per POST accepted.

    python examples/signup/sinks.py --smtp-port 8025 --webhook-port 8026 --record out/signup-record

Both listen on 127.0.0.1 only by default (`--host 0.0.0.0` is for a container whose compose network is the only
way in: compose/signup.yml, which publishes neither port), and the SMTP server refuses any recipient outside the
reserved `.test` TLD: nothing the example does can reach a real person. Each start truncates the recordings (a new
run, a new count).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from email import policy
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple

from aiosmtpd.controller import Controller

log = logging.getLogger("signup.sinks")

HOST = "127.0.0.1"  # loopback by default; --host 0.0.0.0 only inside a container (compose/signup.yml)
SMTP_RECORD = "smtp.jsonl"
WEBHOOK_RECORD = "webhook.jsonl"
SMS_PATH = "/sms"
MAX_BODY = 64 * 1024


class Ports(NamedTuple):
    smtp: int
    webhook: int


class Recorder:
    """Appends one JSON line per record; a line is written whole, so a reader in another process never sees
    half a record (the webhook's threads and the SMTP loop may append at the same time)."""

    def __init__(self, path: Path, append: bool = False) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        if not append:
            path.write_text("")

    def add(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock, self.path.open("a", encoding="utf-8") as f:
            f.write(line)


class SmtpHandler:
    """aiosmtpd handler: accept mail for `.test` recipients and record each message."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        domain = address.rpartition("@")[2].lower()
        if not (domain == "test" or domain.endswith(".test")):
            return "550 5.7.1 this test server only accepts recipients under the reserved .test TLD"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = BytesParser(policy=policy.default).parsebytes(envelope.original_content or envelope.content)
        body = msg.get_body(preferencelist=("plain",))
        self.recorder.add({
            "received_at": time.time(),
            "from": envelope.mail_from,
            "to": list(envelope.rcpt_tos),
            "subject": str(msg.get("Subject", "")),
            "message_id": str(msg.get("Message-ID", "")),
            "headers": {k: str(v) for k, v in msg.items()},
            # SMTP carries CRLF line ends; recorded with plain newlines, as the sender wrote the text
            "body": body.get_content().replace("\r\n", "\n") if body is not None else "",
        })
        return "250 Message accepted for delivery"


def webhook_handler(recorder: Recorder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/healthz":
                return self._reply(200, {"ok": True})
            self._reply(404, {"error": "not found"})

        def do_POST(self) -> None:
            if self.path != SMS_PATH:
                return self._reply(404, {"error": f"POST to {SMS_PATH}"})
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_BODY:
                return self._reply(413 if length else 400, {"error": "body must be 1 byte to 64 KiB"})
            try:
                body = json.loads(self.rfile.read(length))
            except ValueError:
                return self._reply(400, {"error": "body is not JSON"})
            if not isinstance(body, dict):
                return self._reply(400, {"error": "body is not a JSON object"})
            recorder.add({"received_at": time.time(), "path": self.path,
                          "idempotency_key": self.headers.get("Idempotency-Key"), "body": body})
            self._reply(202, {"accepted": True})

        def _reply(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("webhook: " + format, *args)

    return Handler


def free_port(host: str = HOST) -> int:
    # aiosmtpd's Controller checks readiness by connecting to its configured port, so it cannot be given port 0.
    with closing(socket.socket()) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@contextmanager
def running_sinks(record_dir: str | Path, smtp_port: int = 0, webhook_port: int = 0,
                  append: bool = False, host: str = HOST) -> Iterator[Ports]:
    """Start both sinks on `host` (port 0: pick a free one), yield their ports, stop them on exit."""
    record_dir = Path(record_dir)
    smtp = Controller(SmtpHandler(Recorder(record_dir / SMTP_RECORD, append)), hostname=host,
                      port=smtp_port or free_port(host))
    httpd = ThreadingHTTPServer((host, webhook_port), webhook_handler(Recorder(record_dir / WEBHOOK_RECORD, append)))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), name="signup-webhook", daemon=True)
    smtp.start()
    try:
        thread.start()
        ports = Ports(smtp.port, int(httpd.server_address[1]))
        log.info("sinks started", extra={"event": "sinks.start", "host": host, "smtp_port": ports.smtp,
                                         "webhook_port": ports.webhook, "record": str(record_dir)})
        yield ports
    finally:
        httpd.shutdown()
        httpd.server_close()
        smtp.stop()
        log.info("sinks stopped", extra={"event": "sinks.stop"})


def worker_env(ports: Ports) -> dict[str, str]:
    """The environment the sign-up workers need to reach these sinks."""
    return {"SIGNUP_SMTP_HOST": HOST, "SIGNUP_SMTP_PORT": str(ports.smtp),
            "SIGNUP_WEBHOOK_URL": f"http://{HOST}:{ports.webhook}{SMS_PATH}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=HOST, help=f"address to listen on (default {HOST}; 0.0.0.0 only inside a "
                                                     "container network)")
    parser.add_argument("--smtp-port", type=int, default=8025)
    parser.add_argument("--webhook-port", type=int, default=8026)
    parser.add_argument("--record", type=Path, required=True, help="directory for smtp.jsonl and webhook.jsonl")
    parser.add_argument("--append", action="store_true", help="keep earlier recordings instead of truncating")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs ~12 INFO lines per message
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with running_sinks(args.record, args.smtp_port, args.webhook_port, args.append, args.host) as ports:
        for key, value in worker_env(ports).items():
            print(f"export {key}={value}", flush=True)  # the workers' settings, ready to paste or eval
        stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
