"""What the source cannot serve is skipped and reported by the listing page covering it, and the rest flows: a file
name that is not UTF-8 made every page answer 500, for ever; a malformed JSONL line was only a log line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from services.source.app import create_app
from services.source.backends import DirectoryBackend, JsonlBackend, MemoryBackend
from services.source.filter import FilteredBackend


def walk(client: TestClient, limit: int) -> tuple[list[str], list[dict[str, Any]]]:
    names: list[str] = []
    skipped: list[dict[str, Any]] = []
    cursor = None
    while True:
        response = client.get("/api/v1/items", params={"limit": limit, **({"cursor": cursor} if cursor else {})})
        assert response.status_code == 200, response.text
        body = response.json()
        names += [item["name"] for item in body["items"]]
        skipped += body["skipped"]
        cursor = body["next"]
        if not cursor:
            return names, skipped


@pytest.fixture
def latin1_dir(tmp_path: Path) -> Path:
    for i in range(20):
        (tmp_path / f"f{i:02d}.txt").write_text("x")
    with open(os.fsencode(tmp_path) + b"/caf\xe9.txt", "wb") as f:
        f.write(b"y")
    (tmp_path / "m\nid.txt").write_text("z")
    return tmp_path


@pytest.mark.parametrize("limit", [1, 3, 7, 500])
def test_directory_pages_report_each_unservable_name_once(latin1_dir: Path, limit: int) -> None:
    names, skipped = walk(TestClient(create_app(DirectoryBackend(latin1_dir), "skip-dir")), limit)
    assert names == [f"f{i:02d}.txt" for i in range(20)]
    assert sorted((r["record"], r["reason"]) for r in skipped) == [("caf\\xe9.txt", "bad-name"),
                                                                   ("m\\nid.txt", "bad-name")]
    assert {r["detail"] for r in skipped} == {"name is not valid UTF-8", "name contains a control character"}


def test_jsonl_malformed_lines_are_reported_by_their_page(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    path.write_bytes(b'{"name": "a"}\nnot json\n{"name": "b", "x": "\\udce9"}\n{"name": "c"}\n\xff\xfe\n[1]\n'
                     b'{"name": "d"}\n')
    names, skipped = walk(TestClient(create_app(JsonlBackend(path), "skip-jsonl")), 1)
    assert names == ["a", "c", "d"]
    assert [(r["record"], r["reason"]) for r in skipped] == [
        ("line 2", "malformed"), ("line 3", "malformed"), ("line 5", "malformed"), ("line 6", "malformed")]


def test_a_filter_passes_the_inner_skipped_records_on(latin1_dir: Path) -> None:
    backend = FilteredBackend(DirectoryBackend(latin1_dir), "name != 'f00.txt'")
    names, skipped = walk(TestClient(create_app(backend, "skip-filter")), 4)
    assert len(names) == 19 and len(skipped) == 2


def test_an_item_no_response_could_carry_is_skipped_not_a_500() -> None:
    backend = MemoryBackend([{"name": "ok"}, {"name": "bad", "note": "caf\udce9"}])
    names, skipped = walk(TestClient(create_app(backend, "skip-memory")), 10)
    assert names == ["ok"] and [r["record"] for r in skipped] == ["bad"]


def test_the_skipped_metric_counts_distinct_records(latin1_dir: Path) -> None:
    client = TestClient(create_app(DirectoryBackend(latin1_dir, cache_ttl=0), "skip-metric"))
    for _ in range(3):  # every poll lists again: each record is counted once
        walk(client, 5)
    value = REGISTRY.get_sample_value("batchmesh_source_skipped_total", {"pipeline": "skip-metric",
                                                                         "reason": "bad-name"})
    assert value == 2
