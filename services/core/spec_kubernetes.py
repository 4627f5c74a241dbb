"""A work stage's `kubernetes:` section: how the `kubernetes` executor runs each item as a Kubernetes Job (one Job
per item, services/manager/executors/kubernetes.py). Only `image` must be given; every limit has a safe default.

    work:
      executor: kubernetes
      command: [python, examples/thumbnailer/thumbnail.py]
      kubernetes: {image: "batchmesh-worker:0.1.0", resources: {limits: {cpu: "2", memory: 2Gi}}}

    work:                                   # a chain of commands: the book's multi-worker pod
      executor: kubernetes
      chain: [{command: [ffmpeg-thumb]}, {command: [python, upload.py]}]
      kubernetes: {image: "batchmesh-worker:0.1.0", images: {0: "jrottenberg/ffmpeg:6.1-alpine"}}
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .spec_base import parse_duration

# Kubernetes' resource.Quantity, as its apimachinery parses it: a decimal number and an optional suffix
QUANTITY = re.compile(r"^[+]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|[KMGTPE]i|[mkMGTPE])?$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
RESOURCE_NAMES = ("cpu", "memory", "ephemeral-storage")
HANDOFF_IMAGE = "batchmesh:0.1.0"  # services/render/roles.py's MESH_IMAGE: carries batchmesh's handoff step
DEFAULT_UID = 10001  # the images' user (services/Dockerfile)


def _quantity(value: Any, where: str) -> str:
    text = str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not QUANTITY.match(text):
        raise ValueError(f"{where}: {value!r} is not a Kubernetes quantity (e.g. 500m, 2, 256Mi, 1Gi)")
    return text


class StageKubernetes(BaseModel):
    """The Job each item of a `kubernetes` stage runs as. Its pod is hardened like every rendered pod
    (services/core/k8s_objects.py: non-root, read-only root filesystem, no privilege escalation, every capability
    dropped, RuntimeDefault seccomp, no service-account token); writable: only WORK_OUTPUT_DIR and /tmp (emptyDirs)."""

    model_config = ConfigDict(extra="forbid")

    image: str = Field(min_length=1, description="The image the stage's command (or each chain adapter without an "
                                                 "image of its own) runs in; its ENTRYPOINT is replaced by the "
                                                 "command. Chains of in-process workers run services.workers.once "
                                                 "in it: it must carry batchmesh and the pipeline's code then.")
    images: dict[int, str] = Field(default_factory=dict, description="Chains of commands: chain index -> the image "
                                                                     "that adapter runs in (default: `image`).")
    namespace: str | None = Field(default=None, description="Where the Jobs go. Default: the manager's own "
                                                            "namespace in a cluster, else `batchmesh`.")
    service_account: str | None = Field(default=None, description="The Job pods' ServiceAccount (default: the "
                                                                  "namespace's `default`); its token is never "
                                                                  "mounted.")
    resources: dict[str, dict[str, str]] | None = Field(
        default=None, description="requests / limits (cpu, memory, ephemeral-storage) of each container. Default: the "
                                  "rendered workers' (services/core/k8s_objects.py RESOURCES['worker']).")
    user: int = Field(default=DEFAULT_UID, ge=1, description="runAsUser / runAsGroup / fsGroup (never 0).")
    network: bool = Field(default=False, description="false: `batchmesh render k8s` adds a NetworkPolicy denying the "
                                                     "Job pods all traffic (as the docker executor's network: none).")
    tmp: str = Field(default="64Mi", description="sizeLimit of the /tmp emptyDir.")
    output: str = Field(default="1Gi", description="sizeLimit of each WORK_OUTPUT_DIR emptyDir (gone with the pod: "
                                                   "the result is read from the log, see the executor).")
    ttl_after_finished: float = Field(default=86400.0, ge=60, description="ttlSecondsAfterFinished: a safety net; the "
                                      "manager deletes each Job once its outcome is committed. Long, so a crashed "
                                      "manager finds the Job to adopt when it comes back.")
    start_timeout: float = Field(default=300.0, gt=0, description="Per attempt, the time a pod may wait to be "
                                 "scheduled and pull its image; part of the Job's activeDeadlineSeconds.")
    poll: float = Field(default=2.0, ge=0.01, le=60, description="Most seconds between two reads of a Job's status "
                                                                 "(starts at a tenth of it, grows by half each time).")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    handoff_image: str = Field(default=HANDOFF_IMAGE, min_length=1, description="Chains of commands: the image of the "
                               "small step between two adapters (it has to carry batchmesh).")

    _durations = field_validator("ttl_after_finished", "start_timeout", "poll", mode="before")(parse_duration)

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str | None) -> str | None:
        if value is not None and not DNS_LABEL.match(value):
            raise ValueError(f"namespace {value!r}: lowercase letters, digits and '-', at most 63 characters")
        return value

    @field_validator("service_account")
    @classmethod
    def _service_account(cls, value: str | None) -> str | None:
        if value is not None and not DNS_SUBDOMAIN.match(value):
            raise ValueError(f"service_account {value!r} is not a valid Kubernetes name")
        return value

    @field_validator("tmp", "output", mode="before")
    @classmethod
    def _sizes(cls, value: Any) -> str:
        return _quantity(value, "size")

    @field_validator("resources")
    @classmethod
    def _resources(cls, value: dict[str, dict[str, str]] | None) -> dict[str, dict[str, str]] | None:
        if value is None:
            return None
        out: dict[str, dict[str, str]] = {}
        for part, entries in value.items():
            if part not in ("requests", "limits"):
                raise ValueError(f"resources.{part}: give 'requests' and/or 'limits'")
            for name, quantity in entries.items():
                if name not in RESOURCE_NAMES:
                    raise ValueError(f"resources.{part}.{name}: one of {', '.join(RESOURCE_NAMES)}")
                out.setdefault(part, {})[name] = _quantity(quantity, f"resources.{part}.{name}")
        return out


def check_stage(work: Any) -> None:
    """Cross-field rules of a `kubernetes` stage (called by WorkSpec's validator). Raises ValueError."""
    spec: StageKubernetes | None = work.kubernetes
    if work.executor != "kubernetes":
        if spec is not None:
            raise ValueError(f"kubernetes is used by executor kubernetes only (this stage's executor: {work.executor})")
        return
    if spec is None:
        raise ValueError("executor kubernetes needs a kubernetes section naming the image: kubernetes: {image: ...}")
    if spec.images:
        chain = work.chain or []
        if not chain or any(ref.command is None for ref in chain):
            raise ValueError("kubernetes.images gives images to the adapters of a chain of commands only (a stage "
                             "with in-process workers runs them all in one container of `image`)")
        bad = sorted(i for i in spec.images if not 0 <= i < len(chain))
        if bad:
            raise ValueError(f"kubernetes.images: no chain adapter {bad[0]} (the chain has {len(chain)}: 0.."
                             f"{len(chain) - 1})")
