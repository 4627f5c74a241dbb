"""Redis with a password and an ACL user (a real redis-server, tests/integration/secure_redis.py): a pipeline runs
end to end as the ACL user of the README (MESH_ACL: so that list is enough), and `status`, `dlq list`, `reset`
work as it; the password may come from REDIS_URL or from settings (BATCHMESH_REDIS_USERNAME +
BATCHMESH_REDIS_PASSWORD[_FILE]); wrong or missing credentials and a user without the permissions are one line
on stderr and exit 2 — never a traceback, never the password."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
from secure_redis import PASSWORD, USER, USER_PASSWORD, SecureRedis

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "examples" / "wordcount" / "pipeline.yaml"
FILES = 12


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureRedis]:
    srv = SecureRedis(tmp_path_factory.mktemp("auth-redis")).start()
    yield srv
    srv.stop()


def batchmesh(*args: str, env: dict[str, str], tmp: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("BATCHMESH_") and k != "REDIS_URL"}
    full |= {"BATCHMESH_DATA_DIR": str(tmp / "state"), **env}
    return subprocess.run([sys.executable, "-m", "services.cli", *args], cwd=ROOT, env=full, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp: Path, env: dict[str, str],
        *args: str) -> subprocess.CompletedProcess[str]:
    """`batchmesh ARGS` in this process (the CLI's main, as the console script runs it): fast, for error paths."""
    from services.cli import main

    for name in [k for k in os.environ if k.startswith("BATCHMESH_") or k == "REDIS_URL"]:
        monkeypatch.delenv(name)
    for name, value in {"BATCHMESH_DATA_DIR": str(tmp / "state"), **env}.items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def assert_one_clear_line(result: subprocess.CompletedProcess[str], code: int, *secrets: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, result.stderr
    assert len(lines) == 1 and lines[0].startswith("batchmesh: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for secret in secrets:
        for form in (secret, quote(secret, safe="")):
            assert form not in result.stderr + result.stdout
    return lines[0]


def test_a_pipeline_runs_end_to_end_as_the_acl_user(server: SecureRedis, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    texts = tmp_path / "texts"
    subprocess.run([sys.executable, str(SPEC.parent / "generate.py"), str(texts), "--files", str(FILES), "--seed",
                    "5"], check=True, capture_output=True)
    env = {"REDIS_URL": server.url()}  # user and password percent-encoded in the URL
    admin = server.admin()
    admin.acl_log_reset()
    run = batchmesh("run", str(SPEC), "--input", str(texts), "--out", str(tmp_path / "out"), "--quiet",
                    "--timeout", "90", env=env, tmp=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    expected: Counter[str] = Counter()
    for path in texts.rglob("*.txt"):
        expected.update(re.findall(r"[^\W_]+", path.read_text(encoding="utf-8").lower()))
    final = json.loads((tmp_path / "out" / "wordcount.json").read_text())
    assert final["final"] is True and final["aggregate"]["files"] == FILES
    assert final["aggregate"]["words"] == dict(expected)

    status = cli(monkeypatch, capsys, tmp_path, env, "status", str(SPEC))
    assert status.returncode == 0 and json.loads(status.stdout)["batch_done"] is True, status.stderr
    dlq = cli(monkeypatch, capsys, tmp_path, env, "dlq", "list", str(SPEC))
    assert dlq.returncode == 0 and dlq.stdout == "", dlq.stderr
    assert admin.acl_log() == [], "no command of the mesh was denied"
    reset = cli(monkeypatch, capsys, tmp_path, env, "reset", str(SPEC), "--yes")
    assert reset.returncode == 0, reset.stderr
    assert not list(admin.scan_iter("bm:{wordcount}:*")), "reset removed the pipeline's keys"

    user = redis.Redis.from_url(server.url())  # the ACL is the minimum, not everything
    for forbidden in (lambda: user.config_get("*"), lambda: user.flushall(), lambda: user.set("other:key", 1),
                      lambda: user.acl_list()):
        with pytest.raises(redis.exceptions.NoPermissionError):
            forbidden()


def test_credentials_from_settings_instead_of_the_url(server: SecureRedis, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    secret_file = tmp_path / "redis-password"
    secret_file.write_text(USER_PASSWORD + "\n")  # as a mounted Secret may end
    bare = server.url(user=None, password=None)
    as_user = cli(monkeypatch, capsys, tmp_path, {"REDIS_URL": bare, "BATCHMESH_REDIS_USERNAME": USER,
                                                  "BATCHMESH_REDIS_PASSWORD_FILE": str(secret_file)},
                  "status", str(SPEC))
    assert as_user.returncode == 0 and "batch_done" in as_user.stdout, as_user.stderr
    as_default = cli(monkeypatch, capsys, tmp_path, {"REDIS_URL": bare, "BATCHMESH_REDIS_PASSWORD": PASSWORD},
                     "status", str(SPEC))
    assert as_default.returncode == 0, as_default.stderr


@pytest.mark.parametrize(("command", "credentials"), [
    (["status", str(SPEC)], {"user": USER, "password": "not-the-password"}),
    (["status", str(SPEC)], {"user": None, "password": None}),
    (["dlq", "list", str(SPEC)], {"user": USER, "password": "not-the-password"}),
    (["reset", str(SPEC), "--yes"], {"user": None, "password": "wrong default password"}),
], ids=["status-wrong", "status-none", "dlq-wrong", "reset-wrong-default"])
def test_wrong_or_missing_credentials_are_one_line_exit_2(server: SecureRedis, tmp_path: Path, command: list[str],
                                                          credentials: dict[str, str | None],
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    result = cli(monkeypatch, capsys, tmp_path, {"REDIS_URL": server.url(**credentials)}, *command)
    line = assert_one_clear_line(result, 2, "not-the-password", "wrong default password", PASSWORD, USER_PASSWORD)
    assert "refused the credentials" in line and "REDIS_URL" in line


def test_a_password_file_that_cannot_be_read_is_one_line_exit_2(server: SecureRedis, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    result = cli(monkeypatch, capsys, tmp_path, {"REDIS_URL": server.url(user=None, password=None),
                                                 "BATCHMESH_REDIS_PASSWORD_FILE": str(tmp_path / "missing")},
                 "status", str(SPEC))
    line = assert_one_clear_line(result, 2)
    assert "BATCHMESH_REDIS_PASSWORD_FILE" in line and "missing" in line


def test_a_user_without_the_permissions_is_told_what_to_grant(server: SecureRedis, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    server.admin().acl_setuser("weak", enabled=True, passwords=["+weak-pass-1"], commands=["+ping", "+info",
                                                                                         "+hello"], keys=["~bm:*"])
    result = cli(monkeypatch, capsys, tmp_path, {"REDIS_URL": server.url("weak", "weak-pass-1")}, "status", str(SPEC))
    line = assert_one_clear_line(result, 2, "weak-pass-1")
    assert "may not run a command batchmesh needs" in line and "ACL" in line
