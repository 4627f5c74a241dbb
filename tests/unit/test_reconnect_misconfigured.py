"""Reconnect waits out outages but not configuration mistakes: a role with wrong credentials, a forbidding ACL or
a certificate that does not verify exits (2, one line) instead of waiting for ever while it looks alive. The
client here is a stand-in whose PING answers what the test scripts (a unit test of the loop's logic; the real
redis-server cases are in tests/integration/test_redis_auth.py and test_redis_tls.py)."""

from __future__ import annotations

import ssl
import threading

import pytest
import redis

from services.core.health import RoleHealth
from services.core.reconnect import Reconnect, is_misconfigured


class ScriptedPing:
    def __init__(self, *answers: BaseException | None) -> None:
        self.answers, self.pings = list(answers), 0

    def ping(self) -> bool:
        self.pings += 1
        answer = self.answers.pop(0) if self.answers else None
        if answer is not None:
            raise answer
        return True


def reconnect(client: ScriptedPing) -> Reconnect:
    r = Reconnect(client, RoleHealth("p", "worker", "s"), threading.Event())  # type: ignore[arg-type]
    r.backoff.base_s = r.backoff.cap_s = 0.001
    return r


CERT = redis.ConnectionError(ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate "
                                                              "verify failed: unable to get local issuer"))


@pytest.mark.parametrize("exc", [redis.AuthenticationError("invalid username-password pair"),
                                 redis.exceptions.NoPermissionError("NOPERM this user has no permissions to run"),
                                 CERT], ids=["credentials", "acl", "certificate"])
def test_a_misconfiguration_is_raised_not_waited_out(exc: redis.RedisError) -> None:
    assert is_misconfigured(exc)
    client = ScriptedPing()
    with pytest.raises(type(exc)):
        reconnect(client).recover(exc)
    assert client.pings == 0


def test_an_outage_that_turns_into_refused_credentials_is_raised() -> None:
    """Redis came back with another password: the outage is over, the mistake is new."""
    client = ScriptedPing(redis.ConnectionError("refused"), redis.AuthenticationError("WRONGPASS"))
    with pytest.raises(redis.AuthenticationError):
        reconnect(client).recover(redis.ConnectionError("connection reset"))
    assert client.pings == 2


def test_a_plain_outage_is_still_waited_out() -> None:
    client = ScriptedPing(redis.ConnectionError("refused"), redis.TimeoutError("timed out"))
    r = reconnect(client)
    assert not is_misconfigured(redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."))
    assert r.recover(redis.ConnectionError("refused")) is True
    assert client.pings == 3 and r.health.redis_ok


def test_run_lets_a_misconfiguration_end_the_role() -> None:
    calls = []

    def step() -> None:
        calls.append(1)
        raise redis.AuthenticationError("WRONGPASS invalid username-password pair")

    with pytest.raises(redis.AuthenticationError):
        reconnect(ScriptedPing()).run(step)
    assert len(calls) == 1
