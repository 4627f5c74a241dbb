"""A manager restarted in the middle of a batch (found by the chaos harness, bench/chaos.py): it must finish the
batch its predecessor was listing, and open no new batch for a listing that had finished — else the batch is split
in two (the first never closes; the reduce and the join of the second see only part of the items) or an empty
batch fires the barriers a second time (a second batch-complete event: dependents start again)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from source_server import serve

from services.core import Keys, Settings
from services.core.spec import Pipeline
from services.manager.manager import Manager


@pytest.fixture
def source_url(tmp_path: Path) -> Iterator[str]:
    """The real source ambassador over 25 files."""
    from services.source import create_app
    from services.source.backends import DirectoryBackend

    root = tmp_path / "in"
    root.mkdir()
    for i in range(25):
        (root / f"f{i:03d}.txt").write_text(f"file {i}")
    with serve(create_app(DirectoryBackend(root, cache_ttl=0))) as url:
        yield url


def _pipeline(name: str) -> Pipeline:
    return Pipeline.model_validate({"apiVersion": "batchmesh/v1", "name": name, "source": {"path": "/unused"},
                                    "stages": {"work": {"work": {"input": "source", "worker": "noop"}},
                                               "done": {"join": {"input": "work"}}}})


class Killed(Exception):
    """Stands for the SIGKILL: the process stops between two pages, nothing after runs."""


def _manager(client: redis.Redis, settings: Settings, url: str, die_after_pages: int | None = None) -> Manager:
    manager = Manager(client, _pipeline(settings.pipeline), settings, url, page_size=10)
    if die_after_pages is not None:
        dispatch, pages = manager.dispatcher.dispatch, [0]

        def dying(page):  # type: ignore[no-untyped-def]
            if pages[0] == die_after_pages:
                raise Killed
            pages[0] += 1
            return dispatch(page)

        manager.dispatcher.dispatch = dying  # type: ignore[method-assign]
    manager.ensure_groups()
    return manager


def test_a_manager_restarted_mid_listing_finishes_that_batch(client: redis.Redis, settings: Settings,
                                                             source_url: str) -> None:
    keys = Keys(settings.pipeline)
    with pytest.raises(Killed):
        _manager(client, settings, source_url, die_after_pages=2).poll(scheduled=True)  # 20 of 25 dispatched
    [first] = [b.decode() for b in client.zrange(keys.batches(), 0, -1)]
    assert client.scard(keys.batch_items(first)) == 20 and client.hget(keys.manifest(first), "complete") == b"0"
    _manager(client, settings, source_url).poll(scheduled=True)  # the restart's first pass (Schedule: BATCH)
    assert [b.decode() for b in client.zrange(keys.batches(), 0, -1)] == [first], "a restart opened a new batch"
    assert client.scard(keys.batch_items(first)) == 25
    assert client.hget(keys.manifest(first), "complete") == b"1"
    batch = {k.decode(): v.decode() for k, v in client.hgetall(keys.batch()).items()}
    assert (batch["id"], batch["complete"], batch["listed"], batch["new"]) == (first, "1", "25", "25"), batch


def test_a_manager_restarted_after_its_listing_opens_no_empty_batch(client: redis.Redis, settings: Settings,
                                                                    source_url: str) -> None:
    keys = Keys(settings.pipeline)
    _manager(client, settings, source_url).poll(scheduled=True)
    [first] = client.zrange(keys.batches(), 0, -1)
    _manager(client, settings, source_url).poll(scheduled=True)  # restarted: its first pass finds nothing new
    assert client.zrange(keys.batches(), 0, -1) == [first], "a restart opened an empty batch (barriers fire again)"
    assert client.hget(keys.batch(), "id") == first
