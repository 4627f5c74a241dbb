"""The logic of the security settings, without a server (the real-server tests are test_redis_auth.py,
test_redis_tls.py, tests/e2e/test_run_secrets.py): which redis-py options a URL and the settings give, the
configuration mistakes refused before any connection, what counts as a secret, how it is masked in every encoding
and in log lines, and what a worker command's environment keeps."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import redis
from pydantic import SecretStr

from services.core.embedded import RedisConfigError
from services.core.logs import JsonFormatter, TextFormatter
from services.core.masking import command_env, scrub, secret_values
from services.core.redis_connect import client_url, connect, security_options
from services.core.settings import Settings


@pytest.fixture
def pem(tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\n")
    return path


def test_the_urls_own_credentials_win_and_settings_fill_in(tmp_path: Path) -> None:
    url = "redis://alice:from%40url@db:6379/0"
    settings = Settings(redis_url=url, redis_username="bob", redis_password=SecretStr("from-settings"))
    assert security_options(url, settings) == {}
    client = connect(url, settings)
    kw = client.get_connection_kwargs()
    assert (kw["username"], kw["password"]) == ("alice", "from@url")
    bare = "redis://db:6379/0"
    secret = tmp_path / "password"
    secret.write_text("from-file\n")
    assert security_options(bare, Settings(redis_url=bare, redis_username="bob", redis_password_file=secret)) == {
        "username": "bob", "password": "from-file"}
    assert security_options(bare, Settings(redis_url=bare, redis_password=SecretStr(""))) == {}


def test_tls_files_become_redis_py_options(pem: Path) -> None:
    url = "rediss://db:6380/0"
    settings = Settings(redis_url=url, redis_ca_cert=pem, redis_client_cert=pem, redis_client_key=pem)
    assert security_options(url, settings) == {"ssl_ca_certs": str(pem), "ssl_certfile": str(pem),
                                               "ssl_keyfile": str(pem)}
    client = connect(url, settings)
    assert client.get_connection_kwargs()["ssl_ca_certs"] == str(pem)
    assert client.connection_pool.connection_class is redis.SSLConnection
    assert "ssl_cert_reqs" not in client.get_connection_kwargs()  # redis-py's default: "required", verified
    assert client_url(url, settings) == f"{url}?ssl_ca_certs={pem}&ssl_certfile={pem}&ssl_keyfile={pem}"
    query = f"{url}?ssl_ca_certs={pem}"  # redis-py's own option: left to redis-py
    assert security_options(query, Settings(redis_url=query, redis_ca_cert=pem)) == {}


@pytest.mark.parametrize(("url", "fields", "says"), [
    ("redis://db/0", {"redis_ca_cert": "PEM"}, "is not TLS: use rediss://"),
    ("rediss://db/0", {"redis_ca_cert": "/nowhere/ca.pem"}, "BATCHMESH_REDIS_CA_CERT '/nowhere/ca.pem' is not a file"),
    ("rediss://db/0?ssl_ca_certs=/nowhere/ca.pem", {}, "ssl_ca_certs '/nowhere/ca.pem' is not a file"),
    ("rediss://db/0", {"redis_client_cert": "PEM"}, "go together"),
    ("redis://db/0", {"redis_password_file": "/nowhere/pw"}, "BATCHMESH_REDIS_PASSWORD_FILE '/nowhere/pw'"),
    ("http://db/0", {}, "is not a Redis URL"),
])
def test_configuration_mistakes_are_refused_before_connecting(pem: Path, url: str, fields: dict[str, str],
                                                              says: str) -> None:
    fields = {k: pem if v == "PEM" else v for k, v in fields.items()}
    with pytest.raises(RedisConfigError, match=says.replace("(", r"\(")):
        connect(url, Settings(redis_url=url, **fields))


def test_the_embedded_redis_gets_no_security_options(pem: Path) -> None:
    settings = Settings(redis_url=None, redis_password=SecretStr("unused"), redis_ca_cert=pem)
    kw = connect("redis://127.0.0.1:7777/0", settings).get_connection_kwargs()
    assert kw.get("password") is None and "ssl_ca_certs" not in kw


ENV = {"REDIS_URL": "redis://u:p%40ss%2Fw0rd@h:1/0", "BATCHMESH_SOURCE_TOKEN": 'tok"en/+1',
       "SIGNUP_SECRET": "signup-secret-1", "MY_API_KEY": "k3y-value", "BATCHMESH_RUN": "run-token-not-secret",
       "PATH": "/usr/bin", "BATCHMESH_REDIS_PASSWORD": "ab"}


def test_what_counts_as_a_secret() -> None:
    assert secret_values(ENV) == {"p@ss/w0rd", 'tok"en/+1', "signup-secret-1", "k3y-value"}  # "ab": too short


@pytest.mark.parametrize("form", ["p@ss/w0rd", "p%40ss%2Fw0rd", 'tok"en/+1', 'tok\\"en/+1', "tok%22en%2F%2B1",
                                  "signup-secret-1"], ids=["raw", "url", "token", "json", "token-url", "spec-env"])
def test_every_encoding_is_masked(form: str) -> None:
    masked = scrub(f"before {form} after", ENV)
    assert masked == "before *** after"


def test_log_lines_are_masked_in_message_fields_and_tracebacks(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    try:
        raise RuntimeError("failed with token " + ENV["BATCHMESH_SOURCE_TOKEN"])
    except RuntimeError:
        record = logging.getLogger("t").makeRecord("t", logging.ERROR, __file__, 1, "url %s", (ENV["REDIS_URL"],),
                                                   exc_info=__import__("sys").exc_info(),
                                                   extra={"detail": "p@ss/w0rd", "password": "x"})
    for line in (JsonFormatter().format(record), TextFormatter().format(record)):
        assert all(s not in line for s in secret_values(ENV)), line
        assert "***" in line
    assert json.loads(JsonFormatter().format(record))["password"] == "***"  # noqa: S105 - the mask


def test_a_worker_command_gets_no_mesh_credentials() -> None:
    env = command_env(ENV)
    assert "REDIS_URL" not in env and "BATCHMESH_SOURCE_TOKEN" not in env and "BATCHMESH_REDIS_PASSWORD" not in env
    assert env["PATH"] == "/usr/bin" and env["SIGNUP_SECRET"] == ENV["SIGNUP_SECRET"]  # the spec's own env stays
    assert command_env({"REDIS_URL": "redis://h:1/0"}) == {"REDIS_URL": "redis://h:1/0"}  # no password: kept
