"""The one way a batchmesh process gets a Redis client: `connect(url, settings)`, used by every role and the CLI.

Security comes from redis-py's own options, never our own parsing of the URL:

- a password and an ACL user: in the URL (`redis://user:password@host:6379/0`, percent-encoded) or, when the URL
  has none, `BATCHMESH_REDIS_USERNAME` and `BATCHMESH_REDIS_PASSWORD` / `BATCHMESH_REDIS_PASSWORD_FILE`;
- TLS: the `rediss://` scheme, with the CA that signed the server's certificate in `BATCHMESH_REDIS_CA_CERT` (or
  redis-py's URL option `?ssl_ca_certs=/path`), a client certificate for mutual TLS in
  `BATCHMESH_REDIS_CLIENT_CERT` + `BATCHMESH_REDIS_CLIENT_KEY` (`?ssl_certfile=…&ssl_keyfile=…`). The server's
  certificate is always verified (redis-py's default `ssl_cert_reqs=required`), its host name too.

The settings apply to a configured REDIS_URL only: the embedded Redis (no REDIS_URL) listens on loopback without
a password. A bad combination (a CA for a plain redis:// URL, a file that does not exist) is a RedisConfigError
(the CLI exits 2 with one line naming the setting); secrets never appear in a message."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import redis

from .embedded import RedisConfigError, check_url, redact
from .settings import Settings

TLS_FILES = {  # setting -> (redis-py keyword, environment variable)
    "redis_ca_cert": ("ssl_ca_certs", "BATCHMESH_REDIS_CA_CERT"),
    "redis_client_cert": ("ssl_certfile", "BATCHMESH_REDIS_CLIENT_CERT"),
    "redis_client_key": ("ssl_keyfile", "BATCHMESH_REDIS_CLIENT_KEY"),
}


def _read_secret_file(path: Path, variable: str) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise RedisConfigError(f"{variable} {str(path)!r} cannot be read: {exc.strerror or exc}") from None


def security_options(url: str, settings: Settings) -> dict[str, Any]:
    """redis-py keywords for `url` from the settings (what the URL already says wins: redis-py's from_url lets
    the URL's own options override keywords). Raises RedisConfigError for a bad combination."""
    check_url(url)
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    options: dict[str, Any] = {}
    if settings.redis_username and not parts.username:
        options["username"] = settings.redis_username
    if not parts.password:
        if settings.redis_password is not None and settings.redis_password.get_secret_value():
            options["password"] = settings.redis_password.get_secret_value()
        elif settings.redis_password_file is not None:
            options["password"] = _read_secret_file(settings.redis_password_file, "BATCHMESH_REDIS_PASSWORD_FILE")
    tls = parts.scheme == "rediss"
    for field, (keyword, variable) in TLS_FILES.items():
        path: Path | None = getattr(settings, field)
        given = [str(path)] if path is not None else query.get(keyword, [])
        if not given:
            continue
        if not tls:
            raise RedisConfigError(f"{variable if path is not None else keyword} is set but REDIS_URL "
                                   f"{redact(url)!r} is not TLS: use rediss://")
        if not Path(given[0]).is_file():
            raise RedisConfigError(f"{variable if path is not None else keyword} {given[0]!r} is not a file")
        if path is not None and keyword not in query:
            options[keyword] = str(path)
    if ("ssl_certfile" in options or "ssl_certfile" in query) != ("ssl_keyfile" in options or "ssl_keyfile" in query):
        raise RedisConfigError("BATCHMESH_REDIS_CLIENT_CERT and BATCHMESH_REDIS_CLIENT_KEY go together: set both")
    return options


def connect(url: str, settings: Settings | None = None, **kwargs: Any) -> redis.Redis:
    """A client of `url` (from core.embedded.redis_url) with the security settings when `url` is the configured
    REDIS_URL. `kwargs` are redis-py's (timeouts…). No command is sent: errors show at the first one."""
    settings = settings if settings is not None else Settings()
    if settings.redis_url and url == settings.redis_url:
        kwargs = {**security_options(url, settings), **kwargs}
    # A Redis that stops answering (SIGSTOP, a partition) must surface as a TimeoutError, which every role loop
    # treats as an outage (core.reconnect: /healthz, batchmesh_redis_up), instead of hanging a role for ever.
    kwargs.setdefault("socket_timeout", settings.redis_timeout_s + settings.block_ms / 1000)
    kwargs.setdefault("socket_connect_timeout", settings.redis_timeout_s)
    kwargs.setdefault("socket_keepalive", True)
    return redis.Redis.from_url(url, **kwargs)


def client_url(url: str, settings: Settings | None = None) -> str:
    """`url` with the TLS file settings as redis-py query options, for a program that takes a URL alone (rq's
    worker: `rq worker --url`); the password settings are not added (they stay out of argv)."""
    settings = settings if settings is not None else Settings()
    if not (settings.redis_url and url == settings.redis_url):
        return url
    options = security_options(url, settings)
    extra = "&".join(f"{k}={quote(options[k], safe='/')}" for k, _ in TLS_FILES.values() if k in options)
    if not extra:
        return url
    return f"{url}{'&' if urlsplit(url).query else '?'}{extra}"


def explain_security(exc: BaseException, where: str) -> tuple[str, int] | None:
    """One line and an exit code (2: the configuration is wrong) for an error that comes from the security
    settings — TLS verification, a missing client certificate, a TLS server spoken to in plain text, a user the
    ACL does not let run a command — or None (core.redis_errors explains the rest)."""
    detail = str(exc).strip()
    low = detail.lower()
    if "certificate verify failed" in low or "certificate_verify_failed" in low:
        return (f"TLS: the certificate of Redis at {where} does not verify ({_ssl_reason(detail)}); set "
                "BATCHMESH_REDIS_CA_CERT to the CA that signed it (or ?ssl_ca_certs= in REDIS_URL)", 2)
    no_client_cert = Settings().redis_client_cert is None and "ssl_certfile=" not in where
    if ("certificate required" in low or "alert handshake failure" in low or "alert bad certificate" in low or (
            where.startswith("rediss://") and no_client_cert and "eof occurred in violation of protocol" in low)):
        return (f"TLS: Redis at {where} wants a client certificate ({_ssl_reason(detail)}); set "
                "BATCHMESH_REDIS_CLIENT_CERT and BATCHMESH_REDIS_CLIENT_KEY", 2)
    if "wrong version number" in low or "[ssl" in low:
        return (f"TLS handshake with Redis at {where} failed ({_ssl_reason(detail)}); does it speak TLS on "
                "this port? (rediss:// is TLS, redis:// plain)", 2)
    if where.startswith("redis://") and "connection reset by peer" in low:
        return (f"Redis at {where} closed the connection at once ({detail}); if it speaks TLS, use rediss://", 1)
    if "no permissions to run" in low or low.startswith("noperm"):
        return (f"the Redis user of {where} may not run a command batchmesh needs ({detail}); grant it the ACL "
                "of the README (Security: `user batchmesh on … ~bm:* …`)", 2)
    return None


def _ssl_reason(detail: str) -> str:
    start = detail.find("[SSL")
    return detail[start:].split(" (_ssl.c")[0].rstrip(".") if start >= 0 else detail
