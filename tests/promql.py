"""Run PromQL against a real Prometheus from tests: start Debian's `prometheus` binary on a free local port, wait for
its scrape targets, and check that queries (e.g. every panel of a dashboard, see
services.render.grafana.panel_queries) return data. The compose end-to-end test uses the same checks against the
containerised Prometheus at http://127.0.0.1:9090.

HTTP API used: /-/ready, /api/v1/targets, /api/v1/query, /api/v1/rules (Prometheus docs, "HTTP API")."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def poll(check: Callable[[], T | None], timeout: float, interval: float = 0.2) -> T | None:
    """Call `check` until it returns something truthy or `timeout` seconds pass; returns that (or the last value)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


@contextmanager
def local_prometheus(tmp: Path, config: dict[str, Any], binary: str = "prometheus") -> Iterator[str]:
    """Run `binary` with `config` (a prometheus.yml as data) on a free 127.0.0.1 port, storage in `tmp`; yields its
    base URL once /-/ready answers; stops it (by its own PID) on exit."""
    path = shutil.which(binary)
    if path is None:
        raise FileNotFoundError(f"{binary} not on PATH (Debian: apt-get install prometheus)")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp / "prometheus.log").open("w")
    proc = subprocess.Popen([path, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"prometheus exited {proc.returncode}: {(tmp / 'prometheus.log').read_text()}")
            try:
                return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        if not poll(ready, timeout=30):
            raise RuntimeError(f"prometheus not ready at {url}: {(tmp / 'prometheus.log').read_text()}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _get(url: str, path: str, **params: str) -> Any:
    response = httpx.get(f"{url}{path}", params=params, timeout=10)
    body = response.json()
    if body.get("status") != "success":
        raise ValueError(f"{body.get('errorType')}: {body.get('error')}")
    return body["data"]


def targets(url: str) -> list[dict[str, Any]]:
    return _get(url, "/api/v1/targets", state="active")["activeTargets"]


def wait_for_targets(url: str, jobs: set[str], timeout: float = 30) -> list[dict[str, Any]]:
    """Poll until every active target is up and each of `jobs` has one; returns the targets. Raises with the
    targets' state on timeout."""
    def all_up() -> list[dict[str, Any]] | None:
        active = targets(url)
        seen = {t["labels"].get("job") for t in active}
        return active if active and jobs <= seen and all(t["health"] == "up" for t in active) else None

    found = poll(all_up, timeout)
    if not found:
        state = [(t["labels"].get("job"), t["scrapeUrl"], t["health"], t.get("lastError")) for t in targets(url)]
        raise TimeoutError(f"targets not all up within {timeout}s (want jobs {sorted(jobs)}): {state}")
    return found


def query(url: str, expr: str) -> list[dict[str, Any]]:
    """An instant query; the result vector (or matrix/scalar as a one-element list)."""
    data = _get(url, "/api/v1/query", query=expr)
    return data["result"] if data["resultType"] in ("vector", "matrix") else [data["result"]]


def _values(result: list[Any]) -> list[str]:
    return [str(r["value"][1]) if isinstance(r, dict) else str(r[1]) for r in result]


def queries_without_data(url: str, queries: list[tuple[str, str]], allow_nan: bool = False) -> list[str]:
    """`title: expr -> why` for each query that errors or returns nothing (a metric that does not exist, a label
    that never matches) — or, unless `allow_nan`, only NaN (a quantile or ratio over an idle window)."""
    failures = []
    for title, expr in queries:
        try:
            result = query(url, expr)
            if not result:
                failures.append(f"{title}: {expr} -> no data")
            elif not allow_nan and all(v == "NaN" for v in _values(result)):
                failures.append(f"{title}: {expr} -> only NaN")
        except ValueError as exc:
            failures.append(f"{title}: {expr} -> {exc}")
    return failures


def wait_for_data(url: str, queries: list[tuple[str, str]], timeout: float = 30,
                  allow_nan: bool = False) -> list[str]:
    """Poll until every query returns data (rates need two scrapes); returns what still fails after `timeout`."""
    remaining = list(queries)

    def done() -> bool:
        nonlocal remaining
        failing = set(queries_without_data(url, remaining, allow_nan))
        remaining = [(t, e) for t, e in remaining if any(f.startswith(f"{t}: {e} ->") for f in failing)]
        return not remaining

    poll(done, timeout, interval=0.5)
    return queries_without_data(url, remaining, allow_nan)


def rules_health(url: str) -> dict[str, str]:
    """Rule name -> health ('ok', 'err', 'unknown' before its first evaluation) of every loaded rule."""
    return {rule["name"]: rule["health"] for group in _get(url, "/api/v1/rules")["groups"] for rule in group["rules"]}
