"""The dispatch script looks up versions only for items that have a state (issue 12 first pass: a first pass looks up
the states alone). The rule is unchanged: an item is work when its version differs from the one last dispatched,
unless it is in flight (queued, running, failed). Covered here: items with a state but no version (an entry
anyone XADDed and a worker marked), items with both, and items with neither, mixed in one call; and the pipe's
EVALSHA calls after a SCRIPT FLUSH mid-page (answered NOSCRIPT, so not run: re-run with the text, each item once)."""

from __future__ import annotations

import json

import pytest
import redis

from services.core.keys import Keys
from services.core.progress import Progress
from services.manager import diff
from services.manager.script_pipe import ScriptPipe


def test_each_item_of_a_mixed_call_is_decided_by_its_state_and_version(client: redis.Redis,
                                                                        pipeline_name: str) -> None:
    keys = Keys(pipeline_name)
    progress = Progress(client, keys)
    progress.mark(["ext-running", "known-running"], "running")  # ext-*: a state, never dispatched (no version)
    progress.mark(["ext-done", "known-done", "same-done"], "done")
    progress.mark(["ext-failed"], "failed")
    client.hset(keys.versions(), mapping={"known-running": "1", "known-done": "1", "same-done": "2"})
    page = [{"name": name, "version": "2"} for name in (
        "ext-running", "ext-done", "ext-failed", "known-running", "known-done", "same-done", "fresh")]
    d = diff.Dispatcher(client, keys, progress, batch="b")
    d._all_new = True  # as in a first pass: no pre-check, the script alone decides every item
    stats = d.dispatch(page)
    dispatched = {client.xrange(keys.stream("source"))[i][1][b"item"] for i in range(stats.new)}
    names = sorted(n for n in ("ext-done", "known-done", "fresh") if any(f'"id":"{n}"'.encode() in e
                                                                         for e in dispatched))
    assert names == ["ext-done", "fresh", "known-done"]  # changed (or no version) and not in flight
    assert (stats.new, stats.busy, stats.known) == (3, 3, 4)  # busy: the three in flight; known: busy + same-done
    assert client.hget(keys.versions(), "same-done") == b"2"
    assert {k.decode(): v.decode() for k, v in client.hgetall(keys.versions()).items()} == {
        "known-running": "1", "known-done": "2", "same-done": "2", "ext-done": "2", "fresh": "2"}
    counts = progress.counts()
    assert (counts["queued"], counts["running"], counts["failed"], counts["done"]) == (3, 2, 1, 1)
    assert d.dispatch(page).new == 0  # all in flight or known now


def test_calls_answered_noscript_after_a_script_flush_mid_page_run_once_each(client: redis.Redis,
                                                                              pipeline_name: str,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    flushed: list[bool] = []

    class FlushedAfterTwoCalls(ScriptPipe):  # the calls are EVALSHA: the ones Redis meets after the flush fail whole
        def send(self, args: list) -> None:  # type: ignore[override]
            super().send(args)
            if len(self._sent) == 2 and not flushed:
                flushed.append(bool(client.script_flush()))

    monkeypatch.setattr(diff, "ScriptPipe", FlushedAfterTwoCalls)
    keys = Keys(pipeline_name)
    n = diff.FIRST_CHUNK + 4 * diff.SCRIPT_CHUNK
    page = [{"name": f"i-{i}", "version": "1"} for i in range(n)]
    d = diff.Dispatcher(client, keys, Progress(client, keys), batch="b")
    stats = d.dispatch(page)
    assert flushed == [True]
    ids = [json.loads(fields[b"item"])["id"] for _, fields in client.xrange(keys.stream("source"))]
    assert sorted(ids) == sorted(item["name"] for item in page)  # each once, none lost
    assert (stats.new, stats.known, stats.invalid) == (n, 0, 0) and not d.reran  # a NOSCRIPT call had not run
    assert Progress(client, keys).counts()["queued"] == n
    assert d.dispatch(page).new == 0
