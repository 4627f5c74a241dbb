"""What every part of the pipeline spec shares: its error, its duration syntax, its strict model and the
Kubernetes-safe name rule. A module of its own so that the spec's parts import it directly (spec.py imports them)."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict

K8S_NAME = r"^[a-z0-9]([a-z0-9-]{0,48}[a-z0-9])?$"  # a Kubernetes-safe name: it becomes Deployment names too


class SpecError(ValueError):
    """A bad spec: `path` and `reason` of the first error; `errors` holds every (path, reason) found."""

    def __init__(self, path: str, reason: str, *, errors: list[tuple[str, str]] | None = None) -> None:
        self.errors = errors or [(path, reason)]
        lines = [f"{where}: {why}" for where, why in self.errors]
        super().__init__(lines[0] if len(lines) == 1 else f"{len(lines)} errors:\n  " + "\n  ".join(lines))
        self.path, self.reason = path, reason

    @classmethod
    def of(cls, errors: list[tuple[str, str]]) -> SpecError:
        return cls(*errors[0], errors=errors)


def parse_duration(value: Any) -> float:
    """'500ms', '5s', '2m', '1h' or a number of seconds -> seconds."""
    if isinstance(value, int | float):
        return float(value)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", str(value))
    if not match:
        raise ValueError(f"not a duration: {value!r} (use e.g. 500ms, 5s, 2m)")
    number, unit = float(match.group(1)), match.group(2) or "s"
    return number * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _k8s_name(name: str) -> str:
    if not re.match(K8S_NAME, name):
        raise ValueError(f"bad name {name[:80]!r}: 1-50 lowercase letters, digits and '-', starting and ending with a "
                         "letter or digit (it becomes Kubernetes and compose names)")
    return name


K8sName = Annotated[str, AfterValidator(_k8s_name)]
