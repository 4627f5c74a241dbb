"""Schemathesis against Source API v1's own OpenAPI document (DESIGN.md "Source API v1").

The app is the real one (services.source.create_app) over a real DirectoryBackend on a temporary directory of
items — odd names included: spaces, unicode, nested directories, a symlink out of the root — called in-process
through its ASGI interface. Every generated case (positive and negative data) must get no server error and a
response that matches the documented schema: status code, content type, headers and body (schemathesis' default
checks). Hypothesis is derandomized, so CI sees the same ~1,200 cases every run; the total is asserted at the end.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from services.source import create_app
from services.source.backends import DirectoryBackend

EXAMPLES = 600  # per operation; the parameterless /healthz and /metrics have one case each
MIN_TOTAL = 1_000
COUNTS: Counter[str] = Counter()
STATUSES: Counter[tuple[str, int]] = Counter()


def _items_root() -> Path:
    """A temporary input root (module import time: schemathesis loads the schema then)."""
    import atexit
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="bm-fuzz-"))
    atexit.register(shutil.rmtree, base, True)
    root = base / "root"
    (root / "sub" / "deeper").mkdir(parents=True)
    for name in ("a.txt", "b.jpg", "with space.txt", "ünïcødé.txt", "sub/c.txt", "sub/deeper/d.bin", "%41.txt",
                 "semi;colon", "dollar$(id)", "0"):
        (root / name).write_bytes(os.urandom(16))
    (base / "secret").write_text("outside the root")
    (root / "escape").symlink_to(base / "secret")
    return root


APP = create_app(DirectoryBackend(_items_root(), "**/*", cache_ttl=0), pipeline="fuzz")
# A cursor is opaque and a name a safe relative path: neither rule is a JSON Schema, so a schema-valid request may
# get the documented 400 (a cursor this source did not hand out, a name with '..'); that is not a rejected valid
# request. Everything else keeps schemathesis' defaults.
CONFIG = schemathesis.Config.from_dict({"checks": {"positive_data_acceptance": {
    "expected-statuses": ["2xx", 400, 404]}}})
schema = schemathesis.openapi.from_asgi("/openapi.json", APP, config=CONFIG)


@schema.parametrize()
@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_source_api_matches_its_openapi(case: schemathesis.Case) -> None:
    response = case.call_and_validate()
    COUNTS[case.operation.label] += 1
    STATUSES[(case.operation.label, response.status_code)] += 1
    assert response.status_code < 500


def test_case_count() -> None:
    """Runs after the parametrized test above (file order): the fuzzing reached its figure."""
    labels = {op.ok().label for op in schema.get_all_operations()}
    if not labels <= set(COUNTS):
        pytest.fail(f"run the whole module: operations not fuzzed in this session: {sorted(labels - set(COUNTS))}")
    total = sum(COUNTS.values())
    print(f"\nsource API fuzzing: {total} cases, {dict(COUNTS)}, statuses {dict(sorted(STATUSES.items()))}")
    assert total >= MIN_TOTAL, dict(COUNTS)
