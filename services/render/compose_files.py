"""The files around a Compose rendering: what `batchmesh render compose SPEC -o FILE` writes beside FILE (the
pipeline's Prometheus scrape config, the shared alert rules and Grafana provisioning), and the committed
renderings under compose/ that `python -m services.render` regenerates."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from services.core.spec import Pipeline, load_pipeline

from .compose import FILE_NOTE, HEADER, ROOT, compose, dump, render
from .prometheus import scrape_config

SHARED_MOUNTS = ("prometheus/alerts.yml", "grafana/")  # shared by every pipeline: never overwritten

# The committed files (compose/ in the repository): file name -> spec, relative to the repository root.
COMMITTED = {
    "docker-compose.yml": "examples/images/pipeline.yaml",
    "wordcount.yml": "examples/wordcount/pipeline.yaml",
    "thumbnailer.yml": "examples/thumbnailer/pipeline.yaml",
    "signup.yml": "examples/signup/pipeline.yaml",  # its sinks as a sidecar, SIGNUP_SECRET from the environment
}


def mounted_files(pipeline: Pipeline) -> dict[str, str]:
    """What a compose file of `pipeline` mounts, beside it: relative path -> text. The scrape config is the
    pipeline's own; alerts.yml and the Grafana files are shared by every pipeline (the dashboards pick the pipeline
    from Prometheus' labels), and left as they are where they exist."""
    files = {f"prometheus/{pipeline.name}.yml": dump(scrape_config(pipeline))}
    try:
        from . import grafana
    except ImportError:  # the SDK missing: alerts at least (grafana's mounts then missing: said by the caller)
        from . import alerts
        files["prometheus/alerts.yml"] = yaml.safe_dump(alerts.rules(), sort_keys=False, width=1000)
    else:
        files |= grafana.rendered_files([pipeline])
    return files


def cli(spec: str, output: str | None) -> int:
    """`batchmesh render compose SPEC [-o FILE]`: the file to stdout (naming the files it mounts) or to FILE with
    its mounted files beside it. Exit 2 for a spec the containers cannot run as written (one line, no
    traceback)."""
    try:
        text = render(spec, output)
    except ValueError as exc:
        print(f"batchmesh render compose: {exc}", file=sys.stderr)
        return 2
    mounted = mounted_files(load_pipeline(spec))
    if not output:
        sys.stdout.write(text)
        print(f"batchmesh render compose: the file mounts {', '.join(f'./{rel}' for rel in mounted)} (relative to "
              "this directory); render with -o FILE to write them beside it", file=sys.stderr)
        return 0
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    for rel, body in mounted.items():
        path = out.parent / rel
        if path.exists() and rel.startswith(SHARED_MOUNTS):
            if path.read_text() != body:
                print(f"batchmesh render compose: kept {path} (shared; differs from this rendering)", file=sys.stderr)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
        print(f"wrote {path}", file=sys.stderr)
    return 0


def rendered_files(root: Path = ROOT) -> dict[str, str]:
    """Every committed file under compose/ this module renders: relative path -> text."""
    files: dict[str, str] = {}
    for name, spec in COMMITTED.items():
        pipeline = load_pipeline(root / spec)
        files[name] = dump(compose(pipeline, spec)).replace(HEADER, HEADER + FILE_NOTE, 1)
        files[f"prometheus/{pipeline.name}.yml"] = dump(scrape_config(pipeline))
    return files


def write_all(out: Path = ROOT / "compose") -> list[Path]:
    written = []
    for rel, text in rendered_files().items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written
