"""The source API's optional bearer token (services.source.auth): with a token every /api/v1 route answers 401 and
`WWW-Authenticate: Bearer` without it or with another one, 200 with it; /healthz and /metrics stay open; the
OpenAPI document declares the scheme; the comparison is hmac.compare_digest. Without a token the API is open as
before. The manager, given the token in its settings, lists a real source (uvicorn) that wants it and dispatches
every item; with a wrong one the listing fails with the 401 and nothing is dispatched."""

from __future__ import annotations

import hmac
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from pydantic import SecretStr
from source_server import serve

from services.core import Keys, Settings
from services.core.spec import Pipeline
from services.manager import run_manager
from services.manager.lister import SourceError
from services.source import auth, create_app
from services.source.backends import DirectoryBackend

TOKEN = "s0urce-t0ken/with+chars"  # noqa: S105 - a test's


@pytest.fixture
def api(source_dir: Path) -> Iterator[httpx.Client]:
    from fastapi.testclient import TestClient

    with TestClient(create_app(DirectoryBackend(source_dir, cache_ttl=0), "authtest", token=TOKEN)) as client:
        yield client


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer not-it"}, {"Authorization": f"Basic {TOKEN}"},
                                     {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": "Bearer"}],
                         ids=["none", "wrong", "basic", "longer", "empty"])
def test_api_routes_want_the_token(api: httpx.Client, headers: dict[str, str]) -> None:
    for path in ("/api/v1/items", "/api/v1/items/f000.txt"):
        reply = api.get(path, headers=headers)
        assert reply.status_code == 401, (path, reply.text)
        assert reply.headers["www-authenticate"].startswith("Bearer")
        assert TOKEN not in reply.text


def test_the_token_opens_them_and_probes_stay_open(api: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[bytes] = []
    real = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        compared.append(b)
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", recording)
    good = {"Authorization": f"Bearer {TOKEN}"}
    listing = api.get("/api/v1/items", params={"limit": 100}, headers=good)
    assert listing.status_code == 200 and len(listing.json()["items"]) == 25
    assert api.get("/api/v1/items/f000.txt", headers=good).json()["name"] == "f000.txt"
    assert compared == [TOKEN.encode()] * 2, "constant-time comparison of every request"
    assert api.get("/healthz").status_code == 200 and api.get("/metrics").status_code == 200


def test_openapi_declares_the_bearer_scheme(api: httpx.Client) -> None:
    doc = api.get("/openapi.json").json()
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": auth.SCHEME.model.description}
    for path in ("/api/v1/items", "/api/v1/items/{name}"):
        assert doc["paths"][path]["get"]["security"] == [{"bearer": []}]
    assert "security" not in doc["paths"]["/healthz"]["get"]


def test_without_a_token_the_api_is_open(source_dir: Path) -> None:
    from fastapi.testclient import TestClient

    with TestClient(create_app(DirectoryBackend(source_dir, cache_ttl=0), "authtest-open")) as client:
        assert client.get("/api/v1/items").status_code == 200
        assert "securitySchemes" not in client.get("/openapi.json").json().get("components", {})


@pytest.fixture
def tokened_source(source_dir: Path) -> Iterator[str]:
    with serve(create_app(DirectoryBackend(source_dir, cache_ttl=0), "authrun", token=TOKEN)) as url:
        yield url


@pytest.mark.one_backend
@pytest.mark.parametrize("token", [TOKEN, "wrong-token"])
def test_the_manager_lists_with_the_token(tokened_source: str, source_dir: Path, redis_url: str,
                                          pipeline_name: str, tmp_path: Path, token: str) -> None:
    pipeline = Pipeline.model_validate({
        "apiVersion": "batchmesh/v1", "name": pipeline_name, "source": {"path": str(source_dir)},
        "stages": {"work": {"work": {"input": "source", "command": ["true"]}}}})
    settings = Settings(redis_url=redis_url, pipeline=pipeline_name, data_dir=tmp_path / "data",
                        source_token=SecretStr(token))
    if token == TOKEN:
        run_manager(pipeline, settings, tokened_source, threading.Event(), once=True)
    else:
        with pytest.raises(SourceError, match="401"):
            run_manager(pipeline, settings, tokened_source, threading.Event(), once=True)
    dispatched = redis.Redis.from_url(redis_url).xlen(Keys(pipeline_name).stream("source"))
    assert dispatched == (25 if token == TOKEN else 0)
