"""Secrets never leave a batchmesh process: what they are, and the two ways they are kept out of what it writes.

The secrets of a process are the values (of at least MIN_LENGTH characters) of its environment that name one:

- the password of REDIS_URL / BATCHMESH_REDIS_URL / RQ_REDIS_URL (`redis://user:password@…`),
  BATCHMESH_REDIS_PASSWORD and the content of BATCHMESH_REDIS_PASSWORD_FILE;
- BATCHMESH_SOURCE_TOKEN and the content of BATCHMESH_SOURCE_TOKEN_FILE;
- any variable whose name holds PASSWORD, SECRET, TOKEN, APIKEY or API_KEY (a spec's `containers.env` secret,
  SIGNUP_SECRET of the signup example).

`scrub(text)` replaces each of them — as is, percent-encoded (a URL), and JSON-escaped (a JSON log line) — with
`***`: applied to every log line (core.logs), a role's stdout/stderr, and every dead-letter reason (core.deadletter),
so a worker's exception message or stderr that dumps its environment cannot carry one into a log, the dead-letter
stream, `batchmesh status`/`dlq list` or manifest.json. `command_env(environ)` is the environment a worker command
gets: the mesh's own Redis and source credentials removed (a command needs neither)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from urllib.parse import quote, quote_plus, unquote, urlsplit

from pydantic import SecretStr

from .settings import Settings

MIN_LENGTH = 4  # shorter values are not treated as secrets: scrubbing "ab" from every line would garble logs
MASK = "***"
URL_VARIABLES = ("REDIS_URL", "BATCHMESH_REDIS_URL", "RQ_REDIS_URL")
FILE_VARIABLES = ("BATCHMESH_REDIS_PASSWORD_FILE", "BATCHMESH_SOURCE_TOKEN_FILE")
MESH_SECRETS = ("BATCHMESH_REDIS_PASSWORD", "BATCHMESH_REDIS_PASSWORD_FILE", "BATCHMESH_SOURCE_TOKEN",
                "BATCHMESH_SOURCE_TOKEN_FILE")
_SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|APIKEY|API_KEY", re.IGNORECASE)
_NOT_SECRET = {"BATCHMESH_RUN"}  # the local run's process token (core.lifeline): an id, not a credential


def _url_password(url: str) -> str | None:
    try:
        password = urlsplit(url).password
    except ValueError:
        return None
    return unquote(password) if password else None


def secret_values(environ: Mapping[str, str] | None = None) -> frozenset[str]:
    """The secrets of `environ` (default: this process's), as listed in the module docstring."""
    env = os.environ if environ is None else environ
    return _secrets(frozenset(env.items()))


@lru_cache(maxsize=8)  # a role's environment does not change: the secret files are read once
def _secrets(env: frozenset[tuple[str, str]]) -> frozenset[str]:
    found: set[str] = set()
    for name, value in env:
        if name in URL_VARIABLES:
            if password := _url_password(value):
                found.add(password)
        elif name in FILE_VARIABLES and value:
            try:
                found.add(Path(value).read_text().strip())
            except OSError:
                pass
        elif _SECRET_NAME.search(name) and name not in _NOT_SECRET:
            found.add(value)
    return frozenset(s for s in found if len(s) >= MIN_LENGTH)


def _forms(secret: str) -> set[str]:
    return {secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1],
            json.dumps(secret, ensure_ascii=False)[1:-1]}


@lru_cache(maxsize=8)
def _pattern(secrets: frozenset[str]) -> re.Pattern[str] | None:
    forms = sorted({f for s in secrets for f in _forms(s)}, key=len, reverse=True)  # longest first
    return re.compile("|".join(map(re.escape, forms))) if forms else None


def scrub(text: str, environ: Mapping[str, str] | None = None) -> str:
    """`text` with every secret of `environ` (default: this process's) replaced by `***`."""
    pattern = _pattern(secret_values(environ))
    return pattern.sub(MASK, text) if pattern is not None and text else text


def command_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a worker command: `environ` without the mesh's credentials (a REDIS_URL that holds a
    password, the password and source-token variables)."""
    env = dict(os.environ if environ is None else environ)
    for name in MESH_SECRETS:
        env.pop(name, None)
    for name in URL_VARIABLES:
        if name in env and _url_password(env[name]):
            del env[name]
    return env


class SecretFileError(ValueError):
    """A secret's file setting names a file that cannot be read: the CLI exits 2 with this one line."""


def source_token(settings: Settings | None = None) -> str | None:
    """The source API's bearer token (BATCHMESH_SOURCE_TOKEN, else BATCHMESH_SOURCE_TOKEN_FILE's content): the
    source requires it, the manager sends it. None when neither is set."""
    settings = settings if settings is not None else Settings()
    try:
        return secret_text(settings.source_token, settings.source_token_file)
    except OSError as exc:
        raise SecretFileError(f"BATCHMESH_SOURCE_TOKEN_FILE {str(settings.source_token_file)!r} cannot be read: "
                              f"{exc.strerror or exc}") from None


def bearer_headers(token: str | None) -> dict[str, str]:
    """The request headers of a client of a source that wants `token` (the manager's lister)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def secret_text(value: SecretStr | None, path: Path | None) -> str | None:
    """A secret setting's value: the SecretStr if given and not empty, else the content of the file `path`
    (surrounding whitespace stripped);
    None when neither is set. OSError if the file cannot be read (the caller names the setting)."""
    if value is not None and value.get_secret_value():
        return value.get_secret_value()
    if path is not None:
        return path.read_text().strip() or None
    return None
