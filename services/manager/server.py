"""The manager's HTTP side: GET /api/v1/status (the `status()` dict), /metrics and /healthz, served by uvicorn
in a thread so the manager's loop stays a plain loop."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import uvicorn
from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from redis import Redis
from redis.exceptions import RedisError

from services.core.metrics_http import healthz_body
from services.core.spec import Pipeline

from .report import status

log = logging.getLogger(__name__)


def build_app(client: Redis, pipeline: Pipeline) -> FastAPI:
    app = FastAPI(title=f"batchmesh manager: {pipeline.name}", version="v1")

    @app.get("/api/v1/status")
    def get_status() -> dict[str, Any]:
        return status(client, pipeline)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        """200 while the manager's loop (and its executors) run and Redis answers, else 503 with the reason."""
        code, body = healthz_body()
        if code == 200:
            try:
                client.ping()
            except RedisError as exc:
                code, body = 503, {"status": "unhealthy", "reason": f"redis: {type(exc).__name__}: {exc}"[:300]}
        return JSONResponse(body, status_code=code)

    @app.get("/metrics", response_class=Response)
    def metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return app


class StatusServer:
    def __init__(self, client: Redis, pipeline: Pipeline, host: str, port: int) -> None:
        config = uvicorn.Config(build_app(client, pipeline), host=host, port=port, log_level="warning",
                                access_log=False, log_config=None)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="bm-manager-http", daemon=True)

    def start(self, timeout_s: float = 10.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self.server.started:
            raise RuntimeError("the manager's status server did not start (port in use?)")
        log.info("status server started", extra={"event": "manager.http", "port": self.port})

    @property
    def port(self) -> int:
        servers = getattr(self.server, "servers", [])
        return servers[0].sockets[0].getsockname()[1] if servers else self.server.config.port

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(5)
