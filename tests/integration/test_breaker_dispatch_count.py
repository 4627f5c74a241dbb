"""Breaker (issue 12 review): a manager's first pass whose pipelined dispatch connection is killed mid-page.

The calls not answered are re-run through the client (manager.script_pipe); a call that had already run finds its
items dispatched and counts them as known. Every item is still dispatched once, but the batch's `new` (the run's
progress total, the manifest's new/known, the status' `skipped` = listed - new) must still say that every listed
item is new work of this batch, not "known from an earlier batch". Real Redis, real source ambassador, real kill."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from services.core import Keys, Settings
from services.core.spec import Pipeline
from services.manager import diff, status
from services.manager.manager import Manager
from services.manager.script_pipe import ScriptPipe

FILES = diff.FIRST_CHUNK + 3 * diff.SCRIPT_CHUNK  # one page, four pipelined calls


@pytest.fixture
def source_dir(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    root.mkdir()
    for i in range(FILES):
        (root / f"f{i:04d}.txt").write_text(f"file {i}")
    return root


def test_a_connection_killed_mid_page_still_counts_every_item_as_new(client: redis.Redis, settings: Settings,
                                                                     source_url: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    name = settings.pipeline
    keys = Keys(name)
    named = redis.Redis(connection_pool=redis.ConnectionPool(
        **{**client.connection_pool.connection_kwargs, "client_name": name}))
    kills: list[int] = []

    class KilledAfterTheFirstCallRan(ScriptPipe):
        def send(self, args: list) -> None:  # type: ignore[override]
            super().send(args)
            if len(self._sent) == 2 and not kills:
                deadline = time.monotonic() + 30
                while client.xlen(keys.stream("source")) < diff.FIRST_CHUNK and time.monotonic() < deadline:
                    time.sleep(0.005)  # the first call ran (its reply unread): then its connection dies
                for other in client.client_list():
                    if other.get("name") == name:
                        kills.append(client.client_kill_filter(_id=other["id"]))

    monkeypatch.setattr(diff, "ScriptPipe", KilledAfterTheFirstCallRan)
    pipeline = Pipeline.model_validate({"apiVersion": "batchmesh/v1", "name": name, "source": {"path": "."},
                                        "stages": {"w": {"work": {"input": "source", "worker": "noop"}}}})
    manager = Manager(named, pipeline, settings, source_url)
    try:
        manager.ensure_groups()
        total = manager.poll()
    finally:
        manager.http.close()
        named.close()
        named.connection_pool.disconnect()
    assert kills and kills[0] >= 1
    assert client.xlen(keys.stream("source")) == FILES  # each item dispatched once (as before)
    assert client.scard(keys.batch_items(manager.dispatcher.batch)) == FILES
    batch = client.hgetall(keys.batch())
    assert int(batch[b"listed"]) == FILES
    assert int(batch[b"new"]) == FILES and int(batch[b"known"]) == 0, (total, batch)
    assert status(client, pipeline)["skipped"] == 0
