"""The spec's optional `containers:` section: what a pipeline's containers need besides its roles (the worker
image's extras, a one-shot sample-data generator, environment for every role, sidecar services). Read by the
compose and Kubernetes renderings (services/render/); `batchmesh run` ignores it."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator

from .spec_base import K8S_NAME, Strict

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# compose interpolation: $$ (a literal $), $NAME, ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message},
# ${NAME?message}; nothing nested (compose v1 reads no nesting)
_INTERPOLATION = re.compile(r"\$(\$|[A-Za-z_][A-Za-z0-9_]*|\{[A-Za-z_][A-Za-z0-9_]*(:?[-?][^}$]*)?\})")
# what the renderings set themselves, for every role (services/render/roles.py's role_env)
RESERVED_ENV = ("REDIS_URL", "BATCHMESH_")
# the services a rendering names itself: a sidecar may not take their names (nor router-*, worker-*, rq-*)
RESERVED_SERVICES = ("redis", "prepare", "generate", "source", "manager", "prometheus", "grafana")


def _interpolated(value: str) -> str:
    """A value compose interpolates: every `$` must start one of the forms _INTERPOLATION accepts."""
    if "$" in _INTERPOLATION.sub("", value):
        raise ValueError(f"bad compose variable in {value!r}: use $$ for a literal $, or ${{NAME}}, "
                         f"${{NAME:-default}}, ${{NAME:?message}} (not nested)")
    return value


def _env(env: dict[str, str]) -> dict[str, str]:
    for name, value in env.items():
        if not _ENV_NAME.match(name):
            raise ValueError(f"bad environment variable name {name!r}")
        if name == RESERVED_ENV[0] or name.startswith(RESERVED_ENV[1]):
            raise ValueError(f"{name} is set by the renderings themselves (REDIS_URL, BATCHMESH_*)")
        _interpolated(value)
    return env


class SidecarSpec(Strict):
    """A service the roles need beside the mesh (a mail sink, a fake gateway): started before every role, which
    waits until it is healthy (or started, without a healthcheck). It runs hardened like the roles (the
    `${BATCHMESH_UID}` user, read-only root filesystem, no capabilities) with the input and output directories
    mounted, and reaches / is reached by the roles by its service name on the compose network."""

    command: list[str] = Field(
        min_length=1,
        description="Argv run from the repository root (/app, examples/ mounted read-only); `{input}` and "
                    "`{output}` stand for the input and output directories. Compose interpolates `${VAR}`.")
    image: Literal["mesh", "worker"] = Field(
        default="mesh", description="mesh: the slim mesh image; worker: the image the work stages run on (the "
                                    "worker image with `extras`, the mesh image without).")
    env: dict[str, str] = Field(default_factory=dict, description="Its environment (compose `${VAR}` allowed).")
    ports: list[Annotated[int, Field(ge=1, le=65535)]] = Field(
        default_factory=list,
        description="Container ports published on the host's 127.0.0.1 only, at `${BATCHMESH_<NAME>_<PORT>_PORT:-"
                    "<port>}`. Not needed for the roles, which reach every port by the service name.")
    healthcheck: str | Annotated[int, Field(ge=1, le=65535)] | None = Field(
        default=None,
        description="An http:// URL answering 200 when ready (probed from inside the container, e.g. "
                    "http://127.0.0.1:8026/healthz), or a port accepting TCP connections. None: the roles wait "
                    "for it to start only.")

    _check_env = field_validator("env")(_env)

    @field_validator("command")
    @classmethod
    def _argv(cls, argv: list[str]) -> list[str]:
        return [_interpolated(arg) for arg in argv]

    @field_validator("healthcheck")
    @classmethod
    def _url(cls, check: str | int | None) -> str | int | None:
        if isinstance(check, str) and not re.match(r"^https?://[^/\s]+(/\S*)?$", check):
            raise ValueError(f"healthcheck {check!r}: give an http:// URL or a port number")
        return check


def _sidecar_name(name: str) -> str:
    if not re.match(K8S_NAME, name) or name in RESERVED_SERVICES or name.startswith(("router-", "worker-", "rq-")):
        raise ValueError(f"bad service name {name!r}: lowercase letters, digits and '-', none of "
                         f"{', '.join(RESERVED_SERVICES)}, not router-*, worker-*, rq-*")
    return name


SidecarName = Annotated[str, AfterValidator(_sidecar_name)]


class ContainersSpec(Strict):
    """How the container renderings (`batchmesh render compose`, later k8s) package this pipeline; the local run
    ignores it. Optional: without it, every role runs on the slim mesh image, no sample data is generated, and the
    roles get the mesh's environment alone."""

    extras: list[Literal["images", "video", "signup"]] = Field(
        default_factory=list,
        description="pyproject extras the work stages need (the worker image's EXTRAS build argument). None: the "
                    "work stages run on the mesh image, which has no OpenCV/ffmpeg.")
    generate: list[str] | None = Field(
        default=None, min_length=1,
        description="Argv (run from the repository root, in the worker image) that writes sample input into the "
                    "directory `{input}` stands for; a one-shot `generate` service runs it once, unless the input "
                    "directory already holds data. Strings pass through compose's variable interpolation, so "
                    "`${BATCHMESH_GENERATE_COUNT:-24}` lets `up` choose the amount. A jsonl source reads "
                    "`{input}/<its path's file name>`: the generator writes that file.")
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Environment for every role (source, manager, routers, workers) besides the mesh's own "
                    "(REDIS_URL and BATCHMESH_* are refused). Values pass through compose's interpolation: "
                    "`${SIGNUP_SECRET:?set SIGNUP_SECRET}` takes a secret from the environment `up` runs in "
                    "(and refuses to start without it), so it is never written into the file; "
                    "`${NAME:-default}` gives a default; `$$` is a literal $.")
    services: dict[SidecarName, SidecarSpec] = Field(
        default_factory=dict,
        description="Sidecar services the roles depend on, by service name (see SidecarSpec).")

    _check_env = field_validator("env")(_env)

    @field_validator("extras")
    @classmethod
    def _unique(cls, extras: list[str]) -> list[str]:
        return sorted(set(extras))
