"""The HTTP side of workers and routers: /metrics (Prometheus text format) and /healthz on one port, served by a
threaded wsgiref server in a daemon thread (prometheus_client's own app for /metrics).

/healthz answers 200 `{"status": "ok"}` while every role of the process runs its loop and reaches Redis, else
503 `{"status": "unhealthy", "reason": "..."}` (see core.health)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, make_wsgi_app

from . import health, strict_json

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]


def healthz_body() -> tuple[int, dict[str, str]]:
    """(HTTP status, JSON body) of /healthz for this process."""
    ok, reason = health.check()
    return (200, {"status": "ok"}) if ok else (503, {"status": "unhealthy", "reason": reason})


def app(metrics_app: Callable[..., Iterable[bytes]] | None = None) -> Callable[..., Iterable[bytes]]:
    metrics_app = metrics_app or make_wsgi_app(REGISTRY)

    def wsgi(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "").rstrip("/") == "/healthz":
            code, body = healthz_body()
            data = strict_json.dumps(body, separators=(", ", ": ")).encode()
            start_response(f"{code} {'OK' if code == 200 else 'Service Unavailable'}",
                           [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
            return [data]
        return metrics_app(environ, start_response)

    return wsgi


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        """Scrapes and probes are not log lines."""


def serve(port: int, host: str = "0.0.0.0") -> int:
    """Serve /metrics and /healthz on `port` in a daemon thread; returns the bound port (`port` 0 = a free one)."""
    server = make_server(host, port, app(), server_class=_Server, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="bm-metrics-http", daemon=True)
    thread.start()
    bound = int(server.server_address[1])
    log.info("metrics server started", extra={"event": "metrics.http", "port": bound})
    return bound
