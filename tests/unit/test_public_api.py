"""The plugin API by the distribution's name: `from batchmesh import worker, WorkItem, load_pipeline` (a top-level
`services` would collide with any other project's). The examples use it; a plugin using it loads from any
working directory."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from services.workers.registry import public_api_importable

ROOT = Path(__file__).resolve().parents[2]


def test_the_public_names_are_the_implementation() -> None:
    public_api_importable()
    import batchmesh
    from services.core.item import WorkItem
    from services.core.spec import load_pipeline
    from services.workers.registry import worker

    assert (batchmesh.worker, batchmesh.WorkItem, batchmesh.load_pipeline) == (worker, WorkItem, load_pipeline)
    assert set(batchmesh.__all__) >= {"worker", "WorkItem", "load_pipeline"}


def test_the_examples_import_the_public_api_only() -> None:
    for path in [*ROOT.glob("examples/*/*.py"), *ROOT.glob("examples/*/*/*.py")]:
        text = path.read_text()
        assert "from services.workers import" not in text, path
    assert "from batchmesh import worker" in (ROOT / "examples/wordcount/workers.py").read_text()


def test_a_plugin_using_it_registers_from_another_directory(tmp_path: Path) -> None:
    (tmp_path / "plugin.py").write_text(textwrap.dedent("""\
        from batchmesh import WorkItem, worker

        @worker("shout")
        def shout(item, output_dir):
            return {"name": item["name"].upper(), "item_type": WorkItem.__name__}
    """))
    (tmp_path / "p.yaml").write_text(textwrap.dedent("""\
        apiVersion: batchmesh/v1
        name: api
        plugins: [plugin.py]
        source: {path: ./in}
        stages: {a: {work: {input: source, worker: shout}}}
    """))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = textwrap.dedent(f"""\
        from pathlib import Path
        from services.core.spec import load_pipeline
        from services.workers.registry import load_plugins, resolve
        pipeline = load_pipeline({str(tmp_path / "p.yaml")!r})
        load_plugins(pipeline.plugins)
        print(resolve("shout")({{"name": "abc"}}, Path(".")))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, capture_output=True, text=True, env=env,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "{'name': 'ABC', 'item_type': 'WorkItem'}"
