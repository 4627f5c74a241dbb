"""examples/signup/pipeline.yaml against the spec: every router stage validates as spec_routers.py's model of its
kind, every work stage as WorkSpec naming a registered sign-up worker, and the streams close up (every input is
written by someone; only the three senders are unread). Once routers are wired into the spec, load_pipeline too."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import yaml
from example_modules import load_example

from services.core.spec import SOURCE, WorkSpec, load_pipeline
from services.core.spec_routers import ROUTER_SPECS
from services.workers import resolve

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "signup"


load = partial(load_example, "signup")


workers = load("workers")
RAW: dict[str, Any] = yaml.safe_load((EXAMPLE / "pipeline.yaml").read_text())


def streams() -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(inputs, outputs) of every stage, as the models name them."""
    inputs, outputs = {}, {}
    for name, stage in RAW["stages"].items():
        [(kind, body)] = stage.items()
        if kind == "work":
            model = WorkSpec.model_validate(body)
            assert resolve(model.worker or "").__module__ == workers.__name__
            inputs[name], outputs[name] = model.inputs, [name]
        else:
            router = ROUTER_SPECS[kind].model_validate(body)
            inputs[name], outputs[name] = router.inputs, router.outputs(name)
    return inputs, outputs


def test_stages_match_the_models() -> None:
    inputs, outputs = streams()
    assert outputs["zones"] == ["zones.0", "zones.1", "zones.2"]
    assert [inputs[f"verify-{i}"] for i in range(3)] == [["zones.0"], ["zones.1"], ["zones.2"]]
    assert outputs["fanout"] == ["fanout.welcome", "fanout.promo"]
    assert outputs["welcome"] == ["welcome.email", "welcome.sms"]


def test_streams_close_up() -> None:
    inputs, outputs = streams()
    written = {SOURCE} | {s for outs in outputs.values() for s in outs}
    read = {s for ins in inputs.values() for s in ins}
    assert read <= written
    assert written - read == {"welcome-email", "welcome-sms", "promo-email"}


def test_router_expressions_run_server_side() -> None:
    """Only field paths: the splitter, filter and sharder need no Python per message."""
    from services.core.expressions import compile_expression

    stages = RAW["stages"]
    for text in (stages["zones"]["shard"]["key"], stages["welcome"]["split"]["by"], stages["promo"]["filter"]["where"]):
        assert compile_expression(text).simple, text


def test_loads_as_a_pipeline() -> None:
    pipeline = load_pipeline(EXAMPLE / "pipeline.yaml")
    assert pipeline.name == "signup"
