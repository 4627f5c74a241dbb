"""Source API v1 over HTTP: listing and pagination, item lookup, name safety, health, metrics, docs."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.source import FilteredBackend, create_app
from services.source.backends import DirectoryBackend, JsonlBackend

OUTSIDE = "OUTSIDE-THE-ROOT-5f3a"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    for name in ("a.txt", "b.jpg", "sub/c.txt"):
        (root / name).write_text(f"content of {name}")
    (tmp_path / "secret.txt").write_text(OUTSIDE)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text(OUTSIDE)
    (root / "link.txt").symlink_to(tmp_path / "secret.txt")
    return root


@pytest.fixture
def api(root: Path) -> TestClient:
    return TestClient(create_app(DirectoryBackend(root, "**/*", cache_ttl=0), pipeline="apitest"))


def walk(api: TestClient, limit: int, on_page=None) -> list[str]:
    names, cursor = [], None
    while True:
        params = {"limit": limit} | ({"cursor": cursor} if cursor else {})
        r = api.get("/api/v1/items", params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["kind"] == "ItemList" and body["apiVersion"] == "v1"
        assert len(body["items"]) <= limit
        names += [it["name"] for it in body["items"]]
        cursor = body["next"]
        if on_page:
            on_page()
        if cursor is None:
            return names


def test_list_shape_and_defaults(api: TestClient) -> None:
    body = api.get("/api/v1/items").json()
    assert set(body) == {"kind", "apiVersion", "items", "next", "skipped"} and body["next"] is None
    assert body["skipped"] == []  # records in the page's range the source cannot serve (none here)
    assert [it["name"] for it in body["items"]] == ["a.txt", "b.jpg", "sub/c.txt"]  # link.txt escapes: hidden
    assert set(body["items"][0]) == {"name", "size", "mtime", "content_type", "uri", "version"}


@pytest.mark.parametrize("limit", [1, 2, 3])
def test_pagination_walks_every_file_once(api: TestClient, limit: int) -> None:
    assert walk(api, limit) == ["a.txt", "b.jpg", "sub/c.txt"]


def test_pagination_while_files_are_added(api: TestClient, root: Path) -> None:
    for i in range(20):
        (root / f"f{i:02d}").write_text("x")
    before = walk(api, 100)
    added = iter(range(1000))

    def add_files() -> None:
        n = next(added)
        for name in (f"0new{n}", f"f{n:02d}x", f"znew{n}"):
            (root / name).write_text("x")

    seen = walk(api, 3, on_page=add_files)
    assert len(seen) == len(set(seen))
    assert set(before) <= set(seen)


def test_limit_bounds(api: TestClient) -> None:
    for bad in (0, -1, 10_001, "many"):
        assert api.get("/api/v1/items", params={"limit": bad}).status_code in (400, 422)
    assert api.get("/api/v1/items", params={"limit": 10_000}).status_code == 200


# junk, base64 of 'not a name////', base64 of '../etc/passwd'
@pytest.mark.parametrize("cursor", ["%%%", "bm90IGEgbmFtZS8vLy8", "Li4vZXRjL3Bhc3N3ZA"])
def test_bad_cursor_is_400(api: TestClient, cursor: str) -> None:
    r = api.get("/api/v1/items", params={"cursor": cursor})
    assert r.status_code == 400 and "cursor" in r.json()["detail"]


def test_item_detail(api: TestClient, root: Path) -> None:
    r = api.get("/api/v1/items/sub/c.txt")
    assert r.status_code == 200
    assert r.json()["name"] == "sub/c.txt" and r.json()["size"] == len("content of sub/c.txt")
    assert r.json()["uri"] == (root / "sub" / "c.txt").resolve().as_uri()
    assert api.get("/api/v1/items/nope.txt").status_code == 404
    assert api.get("/api/v1/items/sub").status_code == 404  # a directory is not an item
    assert api.get("/api/v1/items/link.txt").status_code == 404  # a symlink out of the root is not served


TRAVERSALS = [
    "../etc/passwd", "..%2Fetc%2Fpasswd", "%2e%2e/secret.txt", "%2E%2E%2Fsecret.txt", "/etc/passwd",
    "%2Fetc%2Fpasswd", "a/../../secret.txt", "sub/..%2F..%2Fsecret.txt", "a.txt%00", "%00", "x" * 2000,
    "..\\secret.txt", "..%5Csecret.txt", "sub%5C..%5C..%5Csecret.txt", "sub//c.txt", "a.txt%0A", "a.txt%0D%0A",
    "..", "%2e%2e", "", "link.txt", "sub/../../etc/passwd",
]


@pytest.mark.parametrize("name", TRAVERSALS)
def test_traversal_never_leaks(api: TestClient, name: str) -> None:
    r = api.get(f"/api/v1/items/{name}")
    assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
    assert OUTSIDE not in r.text
    assert "secret.txt" not in r.text and "passwd" not in r.text  # the bad name is not echoed back


@pytest.mark.parametrize("name", ["..%2Fetc%2Fpasswd", "%2e%2e/x", "%2Fetc%2Fpasswd", "a%00", "x" * 2000, "a%5Cb"])
def test_bad_names_are_400(api: TestClient, name: str) -> None:
    assert api.get(f"/api/v1/items/{name}").status_code == 400


def test_listing_never_leaks(api: TestClient) -> None:
    body = api.get("/api/v1/items", params={"limit": 10_000}).text
    assert OUTSIDE not in body and "secret.txt" not in body and "link.txt" not in body


def test_filter_hides_items_from_list_and_detail(root: Path) -> None:
    backend = FilteredBackend(DirectoryBackend(root, "**/*"), "content_type == 'text/plain'")
    api = TestClient(create_app(backend, pipeline="filtertest"))
    assert walk(api, 1) == ["a.txt", "sub/c.txt"]
    assert api.get("/api/v1/items/a.txt").status_code == 200
    assert api.get("/api/v1/items/b.jpg").status_code == 404  # exists, filtered out
    assert backend.pipeline == "filtertest"
    metrics = api.get("/metrics").text
    assert 'batchmesh_source_items_filtered_total{pipeline="filtertest"}' in metrics


def test_jsonl_over_http(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    path.write_text('{"name": "u1", "email": "a@x"}\nbroken\n{"id": 2}\n{"name": "u3"}\n')
    api = TestClient(create_app(JsonlBackend(path)))
    assert walk(api, 2) == ["u1", "2", "u3"]
    assert api.get("/api/v1/items/u1").json() == {"name": "u1", "email": "a@x"}
    assert api.get("/api/v1/items/2").json() == {"id": 2, "name": "2"}
    assert api.get("/api/v1/items/u9").status_code == 404
    assert api.get("/api/v1/items", params={"cursor": "1-3"}).status_code == 400


def test_healthz_metrics_docs(api: TestClient) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    api.get("/api/v1/items")
    r = api.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert 'batchmesh_source_requests_total{endpoint="list",pipeline="apitest"}' in r.text
    assert api.get("/docs").status_code == 200
    spec = api.get("/openapi.json").json()
    assert {"/api/v1/items", "/api/v1/items/{name}", "/healthz"} <= set(spec["paths"])


def test_create_app_twice_shares_metrics(root: Path) -> None:
    # The default registry refuses duplicate metric names: building several apps in one process must work.
    apps = [TestClient(create_app(DirectoryBackend(root), pipeline=f"p{i}")) for i in range(3)]
    for client in apps:
        assert client.get("/healthz").status_code == 200
    assert 'pipeline="p2"' in apps[0].get("/metrics").text
