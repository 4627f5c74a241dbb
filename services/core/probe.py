"""`batchmesh probe [URL]`: a container HEALTHCHECK in the standard library alone (no httpx import: fast, small).

GET the URL (default http://127.0.0.1:$BATCHMESH_METRICS_PORT/healthz, port 9400 when unset) with a 3 s timeout:
healthy = HTTP 200."""

from __future__ import annotations

import os
import urllib.error
import urllib.request

DEFAULT_PORT = 9400
TIMEOUT_S = 3.0


def default_url(environ: dict[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    port = env.get("BATCHMESH_METRICS_PORT") or "0"
    return f"http://127.0.0.1:{int(port) or DEFAULT_PORT}/healthz"


def probe(url: str | None = None, timeout_s: float = TIMEOUT_S) -> tuple[bool, str]:
    """(healthy, what happened: the status code and body's first 200 characters, or the connection error)."""
    url = url or default_url()
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as reply:  # noqa: S310 - a URL the operator gives
            return reply.status == 200, f"{reply.status} {reply.read(200).decode(errors='replace')}"
    except urllib.error.HTTPError as exc:
        return False, f"{exc.code} {exc.read(200).decode(errors='replace')}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return False, f"{url}: {exc}"
