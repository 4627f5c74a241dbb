"""Source backends: directory listing and pagination, jsonl paging and malformed lines, the filter wrapper."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.source import FilteredBackend, InvalidCursor, InvalidName, build_backend, validate_name
from services.source.backends import DirectoryBackend, Glob, JsonlBackend, MemoryBackend, directory


def walk(backend, limit: int) -> list[str]:
    names, cursor = [], None
    while True:
        items, cursor = backend.list(limit, cursor)
        names += [it["name"] for it in items]
        if cursor is None:
            return names


def touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(name)


@pytest.mark.parametrize("name", ["", "../x", "a/../../x", "/etc/passwd", "a\\b", "a\x00b", "a\nb", "a//b", "a/",
                                  "./a", "a/.", "x" * 1025, "\x7f"])
def test_bad_names_rejected(name: str) -> None:
    with pytest.raises(InvalidName):
        validate_name(name)


@pytest.mark.parametrize("name", ["a", "a/b.txt", "..a", "a..b/c", "ünï cødé.jpg", "x" * 1024])
def test_good_names_accepted(name: str) -> None:
    assert validate_name(name) == name


def test_directory_item_fields(tmp_path: Path) -> None:
    touch(tmp_path, "b.jpg", "a.txt", "sub/c.bin")
    items, cursor = DirectoryBackend(tmp_path).list(10)
    assert cursor is None
    assert [it["name"] for it in items] == ["a.txt", "b.jpg"]  # default glob '*' is one level
    a = items[0]
    st_ = (tmp_path / "a.txt").stat()
    assert a == {"name": "a.txt", "size": 5, "mtime": st_.st_mtime, "content_type": "text/plain",
                 "uri": (tmp_path / "a.txt").resolve().as_uri(), "version": f"5-{st_.st_mtime_ns}"}
    assert DirectoryBackend(tmp_path, "**/*").get("sub/c.bin")["content_type"] == "application/octet-stream"


def test_recursive_glob(tmp_path: Path) -> None:
    touch(tmp_path, "top.mp4", "a/b/deep.mp4", "a/skip.txt", "a/mid.mp4")
    backend = DirectoryBackend(tmp_path, "**/*.mp4")
    assert walk(backend, 2) == ["a/b/deep.mp4", "a/mid.mp4", "top.mp4"]
    assert backend.get("a/skip.txt") is None  # exists, but outside the glob: never served
    assert walk(DirectoryBackend(tmp_path, "a/*.mp4"), 5) == ["a/mid.mp4"]


def test_glob_matcher() -> None:
    assert Glob("**/*.mp4").match("x.mp4") and Glob("**/*.mp4").match("a/b/x.mp4")
    assert not Glob("*.mp4").match("a/x.mp4")
    assert Glob("a/**").match("a/b/c") and not Glob("a/**").match("b/c")
    for bad in ("/abs/*", "../*", "a\\*", ""):
        with pytest.raises(ValueError):
            Glob(bad)


@pytest.mark.parametrize("limit", [1, 3, 7, 100])
def test_pagination_returns_each_file_once(tmp_path: Path, limit: int) -> None:
    names = sorted(f"f{i:03d}.dat" for i in range(50))
    touch(tmp_path, *names)
    assert walk(DirectoryBackend(tmp_path), limit) == names


def test_pagination_stable_while_files_are_added(tmp_path: Path) -> None:
    original = sorted(f"m{i:02d}" for i in range(30))
    touch(tmp_path, *original)
    backend = DirectoryBackend(tmp_path, cache_ttl=0)  # rescan on every page: worst case for stability
    seen, cursor, added = [], None, 0
    while True:
        items, cursor = backend.list(4, cursor)
        seen += [it["name"] for it in items]
        touch(tmp_path, f"a{added:02d}", f"m{added:02d}x", f"z{added:02d}")  # before, among and after the cursor
        added += 1
        if cursor is None:
            break
    assert len(seen) == len(set(seen)), "no file returned twice"
    assert set(original) <= set(seen), "every original file returned"
    assert not any(n.startswith("a") for n in seen)  # added before the cursor: left for the next walk


def test_cache_ttl_serves_snapshot_until_expiry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Too many directories to watch (WATCHED_DIRS): the snapshot is served until it expires."""
    monkeypatch.setattr(directory, "WATCHED_DIRS", 0)
    touch(tmp_path, "a")
    backend = DirectoryBackend(tmp_path, cache_ttl=3600)
    assert walk(backend, 10) == ["a"]
    touch(tmp_path, "b")
    assert walk(backend, 10) == ["a"]
    assert backend.get("b") is not None  # lookups are always fresh
    (tmp_path / "a").unlink()
    assert walk(backend, 10) == []  # deleted files drop out even from a cached snapshot


def test_cache_rescans_when_a_watched_directory_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new file is listed by the next request, not once the cache expires; an unchanged tree is not rescanned."""
    monkeypatch.setattr(directory, "RACY_NS", 0)  # the test's own changes come within one mtime tick
    monkeypatch.setattr(directory, "RESCAN_FACTOR", 0)  # nor wait 10 x the last scan
    touch(tmp_path, "sub/a")
    backend = DirectoryBackend(tmp_path, "**/*", cache_ttl=3600)
    scans = []
    scan = backend._scan
    monkeypatch.setattr(backend, "_scan", lambda: scans.append(1) or scan())
    assert walk(backend, 10) == ["sub/a"]
    assert walk(backend, 10) == ["sub/a"] and len(scans) == 1  # nothing changed: the snapshot serves
    touch(tmp_path, "sub/b")
    os.utime(tmp_path / "sub", ns=(2, 2))  # surely another mtime than at the scan (mtime ticks are coarse)
    assert walk(backend, 10) == ["sub/a", "sub/b"] and len(scans) == 2
    (tmp_path / "sub" / "c").mkdir()  # a new directory: the parent changed, the new one is watched from then on
    os.utime(tmp_path / "sub", ns=(3, 3))
    assert walk(backend, 10) == ["sub/a", "sub/b"] and len(scans) == 3
    touch(tmp_path, "sub/c/d")
    os.utime(tmp_path / "sub" / "c", ns=(4, 4))
    assert walk(backend, 10) == ["sub/a", "sub/b", "sub/c/d"] and len(scans) == 4


def test_cache_rescans_a_directory_changed_just_before_the_scan(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A directory whose mtime is within RACY_NS of the scan is scanned again: a second change in the same mtime
    tick would not change it."""
    monkeypatch.setattr(directory, "RACY_NS", 3600 * 10**9)  # every directory was changed "just now"
    monkeypatch.setattr(directory, "RESCAN_FACTOR", 0)
    touch(tmp_path, "a")
    backend = DirectoryBackend(tmp_path, cache_ttl=3600)
    assert walk(backend, 10) == ["a"]
    mtime = tmp_path.stat().st_mtime_ns
    touch(tmp_path, "b")
    os.utime(tmp_path, ns=(mtime, mtime))  # the same tick: the mtime alone does not tell
    assert walk(backend, 10) == ["a"]  # within RACY_NS of the scan: the snapshot serves
    monkeypatch.setattr(directory, "RACY_NS", 10**8)
    time.sleep(0.15)
    assert walk(backend, 10) == ["a", "b"]  # RACY_NS after the racy scan: scanned again


def test_bad_directory_cursor(tmp_path: Path) -> None:
    backend = DirectoryBackend(tmp_path)
    for bad in ("!!!", "Li4vZXRj", "AA"):  # not base64; '../etc'; NUL
        with pytest.raises(InvalidCursor):
            backend.list(10, bad)


def test_symlinks(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    touch(root, "real.txt")
    touch(outside, "secret.txt")
    (root / "leak.txt").symlink_to(outside / "secret.txt")
    (root / "leakdir").symlink_to(outside, target_is_directory=True)
    (root / "alias.txt").symlink_to(root / "real.txt")
    backend = DirectoryBackend(root, "**/*")
    assert walk(backend, 10) == ["alias.txt", "real.txt"]
    assert backend.get("leak.txt") is None and backend.get("leakdir/secret.txt") is None
    assert backend.get("alias.txt")["size"] == len("real.txt")


def test_unservable_file_names_are_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    touch(tmp_path, "ok", "back\\slash", "ctl\x01")
    with caplog.at_level(logging.WARNING):
        assert walk(DirectoryBackend(tmp_path), 10) == ["ok"]
    assert "cannot be served" in caplog.text


def test_directory_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a directory"):
        DirectoryBackend(tmp_path / "missing")


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_jsonl_paging(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "items.jsonl", [json.dumps({"name": f"n{i}", "v": i}) for i in range(10)])
    backend = JsonlBackend(path)
    items, cursor = backend.list(4)
    assert [it["v"] for it in items] == [0, 1, 2, 3] and cursor is not None
    assert walk(backend, 3) == [f"n{i}" for i in range(10)]
    assert backend.list(10) == (backend.list(10)[0], None)
    assert backend.get("n7") == {"name": "n7", "v": 7}
    assert backend.get("missing") is None


def test_jsonl_appending_during_walk(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "items.jsonl", [json.dumps({"id": i}) for i in range(5)])
    backend = JsonlBackend(path)
    items, cursor = backend.list(3)
    with path.open("a") as f:
        f.write(json.dumps({"id": 5}) + "\n")
    rest, _ = backend.list(10, cursor)
    assert [it["name"] for it in items + rest] == [str(i) for i in range(6)]  # `id` becomes the name
    assert backend.get("5") == {"id": 5, "name": "5"}


def test_jsonl_malformed_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lines = ['{"name": "a"}', "{not json", "[1, 2]", '{"other": 1}', "", '{"name": "../x"}', '{"name": "b"}']
    backend = JsonlBackend(write_jsonl(tmp_path / "items.jsonl", lines))
    with caplog.at_level(logging.WARNING):
        assert walk(backend, 1) == ["a", "b"]
        walk(backend, 100)  # a second pass does not warn again
    assert backend.malformed == 4
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 4
    assert [w.split()[3] for w in warnings] == ["2", "3", "4", "6"]  # "skipping malformed line N of ..."


def test_jsonl_unterminated_last_line(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    path.write_text('{"name": "a"}\n{"name": "b"}\n{"name": "c')  # a writer mid-line
    backend = JsonlBackend(path)
    assert walk(backend, 10) == ["a", "b"] and backend.malformed == 0
    path.write_text('{"name": "a"}\n{"name": "b"}\n{"name": "c"}')  # complete, without a final newline
    assert walk(backend, 10) == ["a", "b", "c"]


def test_jsonl_bad_cursor(tmp_path: Path) -> None:
    backend = JsonlBackend(write_jsonl(tmp_path / "items.jsonl", ['{"name": "abc"}', '{"name": "def"}']))
    for bad in ("x", "1-3", "0-99999", "-1-0", "1-" + "9" * 40):  # garbage, mid-line, past the end, negative, huge
        with pytest.raises(InvalidCursor):
            backend.list(1, bad)


def test_build_backend(tmp_path: Path) -> None:
    touch(tmp_path, "a.txt", "b.csv")
    backend = build_backend("directory", path=str(tmp_path), glob="*", filter="ends_with(name, '.csv')")
    assert isinstance(backend, FilteredBackend) and walk(backend, 10) == ["b.csv"]
    path = write_jsonl(tmp_path / "x.jsonl", ['{"name": "a"}'])
    assert isinstance(build_backend("jsonl", path=str(path), glob="*", filter=None), JsonlBackend)
    with pytest.raises(ValueError, match="known: .*directory.*jsonl"):
        build_backend("s3", path="x")
    with pytest.raises(ValueError, match="bad options"):
        build_backend("directory", path=str(tmp_path), colour="red")
    with pytest.raises(ValueError, match="glob"):
        build_backend("jsonl", path=str(path), glob="*.json")


@pytest.mark.parametrize("expression", ["", "size >", "[?", "foo(bar)", "name ==="])
def test_bad_filter_expression(expression: str) -> None:
    with pytest.raises(ValueError, match="bad filter expression"):
        FilteredBackend(MemoryBackend(), expression)


items_strategy = st.lists(
    st.fixed_dictionaries({"size": st.integers(-5, 5), "kind": st.sampled_from(["jpg", "mp4", ""]),
                           "tags": st.lists(st.sampled_from(["a", "b"]), max_size=2)}),
    max_size=40,
)
EXPRESSIONS = {
    "size > `0`": lambda it: it["size"] > 0,
    "kind == 'jpg'": lambda it: it["kind"] == "jpg",
    "kind": lambda it: it["kind"] != "",  # empty string is false in JMESPath
    "tags": lambda it: bool(it["tags"]),  # so is an empty array
    "contains(tags, 'a') || size == `0`": lambda it: "a" in it["tags"] or it["size"] == 0,
    "size": lambda it: True,  # every number, 0 included, is true in JMESPath
    "missing": lambda it: False,
}


@settings(max_examples=60, deadline=None)
@given(items=items_strategy, expression=st.sampled_from(sorted(EXPRESSIONS)), limit=st.integers(1, 7),
       budget=st.integers(1, 10))
def test_filter_keeps_exactly_the_matching_subset(items, expression, limit, budget) -> None:
    items = [{**it, "name": f"i{i:03d}"} for i, it in enumerate(items)]
    backend = FilteredBackend(MemoryBackend(items), expression, scan_budget=budget)
    expected = [it["name"] for it in items if EXPRESSIONS[expression](it)]
    assert walk(backend, limit) == expected
    assert all((backend.get(it["name"]) is not None) == (it["name"] in expected) for it in items)


def test_filter_counts_dropped_items(tmp_path: Path) -> None:
    from prometheus_client import REGISTRY

    def dropped() -> float:
        return REGISTRY.get_sample_value("batchmesh_source_items_filtered_total", {"pipeline": "countme"}) or 0.0

    before = dropped()
    backend = FilteredBackend(MemoryBackend([{"name": str(i), "n": i} for i in range(10)]), "n < `3`", "countme")
    assert walk(backend, 4) == ["0", "1", "2"]
    assert dropped() - before == 7


def test_directory_scan_is_not_quadratic(tmp_path: Path) -> None:
    touch(tmp_path, *(f"f{i:05d}" for i in range(2000)))
    backend = DirectoryBackend(tmp_path, cache_ttl=3600)  # a slow walk must not outlive the cache: count scans only
    calls = 0
    scan = backend._scan

    def counting_scan() -> list[str]:
        nonlocal calls
        calls += 1
        return scan()

    backend._scan = counting_scan  # type: ignore[method-assign]
    assert len(walk(backend, 10)) == 2000
    assert calls <= 2, "one directory scan serves the whole walk (two: the first was within RACY_NS of the files)"
    assert os.listdir(tmp_path)
