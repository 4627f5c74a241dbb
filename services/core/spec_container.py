"""A work stage's `container:` section: the sandbox the `docker` executor runs each item in (one container per
item). Every limit has a safe default; only `image` must be given.

    work:
      executor: docker
      command: [python, examples/thumbnailer/thumbnail.py]
      container: {image: "batchmesh-worker:0.1.0", memory: 1g, cpus: 2}
"""

from __future__ import annotations

import os
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmg]?)\s*", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_USER = re.compile(r"(\d+)(?::(\d+))?")
NOBODY = "65534:65534"
MIN_MEMORY = 6 * 1024**2  # the engine refuses less


def parse_size(value: Any) -> int:
    """'512m', '1g', '64k' or a number of bytes -> bytes (binary units, as docker counts them)."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        return value
    match = _SIZE.fullmatch(str(value))
    if not match:
        raise ValueError(f"not a size: {value!r} (use bytes, or a number with k, m or g, e.g. 512m)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


class StageContainer(BaseModel):
    """The container each item of a `docker` stage runs in: no network, a read-only root filesystem, no
    capabilities, no privilege escalation, a non-root user, bounded memory, CPU and processes. Writable: only the
    item's WORK_OUTPUT_DIR and a small tmpfs on /tmp."""

    model_config = ConfigDict(extra="forbid")

    image: str = Field(min_length=1, description="The image the command runs in (its ENTRYPOINT is replaced: the "
                                                 "argv is exactly the stage's command). Must exist on the engine.")
    network: bool = Field(default=False, description="false: no network at all (network_mode none, only lo); "
                                                     "true: the engine's default bridge.")
    memory: int = Field(default=512 * 1024**2, description="Memory limit in bytes, or a size such as '512m', '2g' "
                                                           "(binary units); no swap beyond it. Exceeding it is an "
                                                           "OOM kill: a failed attempt.")
    cpus: float = Field(default=1.0, gt=0, le=1024, description="CPUs (fractions allowed: 0.5); capped at the "
                                                                "engine's CPU count.")
    pids: int = Field(default=256, ge=8, le=1_000_000, description="Most processes and threads at once.")
    tmp: int = Field(default=64 * 1024**2, description="Size of the /tmp tmpfs in bytes, or '64m'; it counts "
                                                       "against `memory`.")
    user: str | None = Field(default=None, description="'uid' (gid = uid) or 'uid:gid', numeric, never 0. Default: the "
                                                       "manager's own uid:gid, or 65534:65534 (nobody) when the "
                                                       "manager runs as root.")
    mounts: list[str] = Field(default_factory=list, description="Extra host paths mounted read-only at the same "
                                                                "path (relative: to the manager's working dir).")

    _sizes = field_validator("memory", "tmp", mode="before")(parse_size)

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: int) -> int:
        if value < MIN_MEMORY:
            raise ValueError(f"memory {value} bytes is below the engine's minimum of 6m")
        return value

    @field_validator("tmp")
    @classmethod
    def _tmp(cls, value: int) -> int:
        if value < 1024**2:
            raise ValueError(f"tmp {value} bytes is below 1m")
        return value

    @field_validator("user")
    @classmethod
    def _user(cls, value: str | None) -> str | None:
        if value is None:
            return None
        match = _USER.fullmatch(value.strip())
        if not match:
            raise ValueError(f"user {value!r}: give a numeric 'uid' or 'uid:gid' (names cannot be checked for root)")
        if int(match.group(1)) == 0:
            raise ValueError("user: uid 0 is root; workers never run as root")
        if match.group(2) is not None and int(match.group(2)) == 0:
            raise ValueError("user: gid 0 is root's group (it opens root-group files and sockets); give another gid")
        return value.strip()

    @field_validator("mounts")
    @classmethod
    def _mounts(cls, paths: list[str]) -> list[str]:
        for path in paths:
            norm = os.path.normpath(path.strip()) if path.strip() else ""
            if not norm or norm == "/":
                raise ValueError(f"mount {path!r}: give a directory or file, not the host's root")
            if norm.endswith(".sock") or os.path.basename(norm) in ("docker.sock", "containerd.sock"):
                raise ValueError(f"mount {path!r}: a socket, even read-only, lets the worker out of its sandbox")
        return paths

    @property
    def run_user(self) -> str:
        """The user the container runs as (see `user`)."""
        if self.user is not None:  # a uid alone gets its own number as gid (the engine would pick 0 or the image's)
            return self.user if ":" in self.user else f"{self.user}:{self.user}"
        uid, gid = os.getuid(), os.getgid()
        return NOBODY if uid == 0 else f"{uid}:{gid}"
