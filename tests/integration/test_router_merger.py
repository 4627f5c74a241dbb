"""The merger is fair: a busy input does not starve a quiet one. One input holds a 10,000-entry backlog, another
10 entries: the quiet one is drained in the first round, on both paths, stepping by hand and running for real."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from services.core import Keys, Settings, WorkItem
from services.core.spec_routers import MergeSpec
from services.router import build_router, run_router


def fill(client: redis.Redis, keys: Keys, stream: str, n: int) -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(keys.stream(stream), WorkItem(id=f"{stream}-{i}").encode())
    pipe.execute()


def merged(client: redis.Redis, keys: Keys) -> list[str]:
    return [WorkItem.decode(f).id for _, f in client.xrange(keys.stream("all"))]


@pytest.mark.parametrize("server_side", [True, False])
def test_a_quiet_input_is_drained_in_the_first_round(
    client: redis.Redis, settings: Settings, server_side: bool
) -> None:
    keys = Keys(settings.pipeline)
    router = build_router(client, settings, "all", MergeSpec(inputs=["busy", "quiet"]), server_side=server_side)
    assert router.count == settings.batch_size // 2  # each input's share of a batch per round
    fill(client, keys, "busy", 10_000)
    fill(client, keys, "quiet", 10)
    router.step()
    out = merged(client, keys)
    assert len(out) == router.count + 10
    assert [i for i in out if i.startswith("quiet")] == [f"quiet-{i}" for i in range(10)]
    assert client.xpending(keys.stream("quiet"), "all")["pending"] == 0
    while router.step() or not router.caught_up():
        pass
    out = merged(client, keys)
    assert len(out) == len(set(out)) == 10_010
    assert [i for i in out if i.startswith("busy")] == [f"busy-{i}" for i in range(10_000)]  # order per input


@pytest.mark.parametrize("server_side", [True, False])
def test_new_entries_on_a_quiet_input_overtake_a_running_backlog(
    client: redis.Redis, settings: Settings, server_side: bool
) -> None:
    keys, stop = Keys(settings.pipeline), threading.Event()
    settings = settings.model_copy(update={"batch_size": 64})
    fill(client, keys, "busy", 10_000)
    thread = threading.Thread(target=run_router, args=(settings.pipeline, "all", MergeSpec(inputs=["busy", "quiet"]),
                                                       settings, stop), kwargs={"server_side": server_side})
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while client.xlen(keys.stream("all")) < 500 and time.monotonic() < deadline:
            time.sleep(0.001)
        fill(client, keys, "quiet", 10)  # arrives while thousands of busy entries still wait
        while len([i for i in merged(client, keys) if i.startswith("quiet")]) < 10 and time.monotonic() < deadline:
            time.sleep(0.001)
        out = merged(client, keys)
        last_quiet = max(n for n, i in enumerate(out) if i.startswith("quiet"))
        assert len(out) < 10_010, "the backlog was not still running: the test proves nothing"
        # Within a round or two: at most a couple of busy shares (32 each) got ahead of the quiet entries.
        first_quiet = min(n for n, i in enumerate(out) if i.startswith("quiet"))
        assert last_quiet - first_quiet < 10 + 2 * 32
    finally:
        stop.set()
        thread.join(10)
