"""Redis over TLS (a real redis-server speaking TLS only, with a CA, server and client certificates made by the
test; tests/integration/secure_redis.py): a pipeline runs end to end over `rediss://` as the ACL user, with mutual
TLS from the settings (BATCHMESH_REDIS_CA_CERT, _CLIENT_CERT, _CLIENT_KEY); redis-py's own URL options work too.
A missing or wrong CA, a missing client certificate, a CA for a plain redis:// URL, a CA file that does not
exist, plain text to a TLS port: each one line on stderr naming what to set, exit 2 (plain text: 1), never a
traceback or the password."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from secure_redis import USER_PASSWORD, SecureRedis
from test_redis_auth import ROOT, SPEC, assert_one_clear_line, batchmesh, cli

FILES = 6


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureRedis]:
    srv = SecureRedis(tmp_path_factory.mktemp("tls-redis"), tls=True, mutual=True).start()
    yield srv
    srv.stop()


def tls_env(srv: SecureRedis, **overrides: str) -> dict[str, str]:
    return {"REDIS_URL": srv.url(), "BATCHMESH_REDIS_CA_CERT": str(srv.certs["ca"]),
            "BATCHMESH_REDIS_CLIENT_CERT": str(srv.certs["client"]),
            "BATCHMESH_REDIS_CLIENT_KEY": str(srv.certs["client-key"]), **overrides}


def test_a_pipeline_runs_over_mutual_tls(server: SecureRedis, tmp_path: Path) -> None:
    texts = tmp_path / "texts"
    subprocess.run([sys.executable, str(ROOT / "examples" / "wordcount" / "generate.py"), str(texts), "--files",
                    str(FILES), "--seed", "2"], check=True, capture_output=True)
    run = batchmesh("run", str(SPEC), "--input", str(texts), "--out", str(tmp_path / "out"), "--quiet",
                    "--timeout", "90", env=tls_env(server), tmp=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    final = json.loads((tmp_path / "out" / "wordcount.json").read_text())
    assert final["final"] is True and final["aggregate"]["files"] == FILES
    assert int(server.admin().hlen("bm:{wordcount}:state")) == FILES  # the mesh's state is on the TLS server


def test_redis_py_url_options_work_as_well(server: SecureRedis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    url = (f"{server.url()}?ssl_ca_certs={server.certs['ca']}&ssl_certfile={server.certs['client']}"
           f"&ssl_keyfile={server.certs['client-key']}")
    result = cli(monkeypatch, capsys, tmp_path, {"REDIS_URL": url}, "status", str(SPEC))
    assert result.returncode == 0 and "batch_done" in result.stdout, result.stderr


@pytest.mark.parametrize(("case", "code", "says"), [
    ("no-ca", 2, "BATCHMESH_REDIS_CA_CERT"),
    ("wrong-ca", 2, "does not verify"),
    ("no-client-cert", 2, "BATCHMESH_REDIS_CLIENT_CERT"),
    ("ca-file-missing", 2, "is not a file"),
    ("ca-for-plain-url", 2, "use rediss://"),
    ("plain-to-tls-port", 1, "use rediss://"),
])
def test_tls_mistakes_are_one_line(server: SecureRedis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str], case: str, code: int, says: str) -> None:
    plain = server.url().replace("rediss://", "redis://")
    env = {
        "no-ca": {"REDIS_URL": server.url()},
        "wrong-ca": tls_env(server, BATCHMESH_REDIS_CA_CERT=str(server.certs["other-ca"])),
        "no-client-cert": {"REDIS_URL": server.url(), "BATCHMESH_REDIS_CA_CERT": str(server.certs["ca"])},
        "ca-file-missing": tls_env(server, BATCHMESH_REDIS_CA_CERT=str(tmp_path / "nope.pem")),
        "ca-for-plain-url": tls_env(server, REDIS_URL=plain),
        "plain-to-tls-port": {"REDIS_URL": plain},
    }[case]
    line = assert_one_clear_line(cli(monkeypatch, capsys, tmp_path, env, "status", str(SPEC)), code, USER_PASSWORD)
    assert says in line, line
