"""The handed case /work/shared/cases/chaos-wordcount.sh as a test of our own (bench/chaos_wordcount.py): the word
count over generated files under `batchmesh run` while the source, the manager, the routers, the map workers and
the reducer are SIGKILLed at random moments; the supervisor restarts them and the written aggregate must equal a
`collections.Counter` of the files. (The script's 2,000 files and 30 kills: `python -m bench.chaos_wordcount`.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos_wordcount import run_wordcount


@pytest.mark.timeout(120)
def test_wordcount_is_exact_through_kills(tmp_path: Path) -> None:
    f = run_wordcount(200, 8, workdir=tmp_path, seed=2, delay_ms=30, timeout=90, visibility_timeout=5)
    report = f"{ {k: v for k, v in f.items() if k != 'kill_log'} }"
    assert f["kills"] >= 5, report
    assert f["run_exit"] == 0, report
    assert f["final"] is True and f["files_folded"] == 200, report
    assert f["words_differing"] == 0 and f["exact"], report
