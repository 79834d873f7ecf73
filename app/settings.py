"""The one settings object.

Every field is read from the environment as ``SPILLWAY_<FIELD NAME>`` (for
example ``SPILLWAY_KAFKA_BOOTSTRAP``); defaults match the local stack started by
``scripts/stack up``. Field descriptions are the configuration reference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

Stage = Literal["render", "route", "dispatch", "intake", "all"]
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SPILLWAY_", extra="ignore")

    # --- process -----------------------------------------------------------
    stage: Stage = Field(
        "all",
        description="Which stage this worker runs: render, route, dispatch, intake, or all "
        "(dev mode: every stage in one process). Each stage has its own app id, hence its "
        "own consumer group.",
    )
    app_id_prefix: str = Field(
        "spillway", description="Prefix of the Faust app id; the app id is '<prefix>-<stage>'."
    )
    topic_namespace: str = Field(
        "",
        description="Optional prefix put before every topic name (e.g. 'staging.'), so several "
        "pipelines can share one cluster. Empty in production.",
    )

    # --- Kafka -------------------------------------------------------------
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers.")
    topic_partitions: int = Field(
        4,
        ge=1,
        description="Partitions of every Spillway topic and table. Caps how many workers of one "
        "stage can share the load.",
    )
    topic_replication: int = Field(1, ge=1, description="Replication factor of created topics.")
    store: str = Field(
        "memory://",
        description="Faust table store. Tables are changelog-backed in Kafka whatever the store; "
        "memory:// rebuilds them from the changelog at start.",
    )
    producer_linger_ms: int = Field(5, ge=0, description="Producer linger for pipeline output.")

    # --- Schema Registry ---------------------------------------------------
    schema_registry_url: str = Field(
        "http://127.0.0.1:8081/apis/ccompat/v7",
        description="Confluent-compatible Schema Registry base URL (Apicurio: /apis/ccompat/v7).",
    )

    # --- web (Faust's web server: intake, health, metrics) ------------------
    web_host: str = Field("127.0.0.1", description="Address the worker's web server binds to.")
    web_port: int | None = Field(
        None,
        description="Port of the worker's web server; default by stage: all 6066, render 6067, "
        "route 6068, dispatch 6069, intake 8080.",
    )

    # --- intake --------------------------------------------------------------
    intake_max_body_bytes: int = Field(
        1_048_576, ge=1, description="Largest HTTP intake request body accepted (bytes)."
    )
    intake_max_batch: int = Field(1000, ge=1, description="Most events in one batch request.")
    intake_ack_timeout_s: float = Field(
        10.0, gt=0, description="How long intake waits for the broker's ack before answering 503."
    )
    intake_retry_after_s: int = Field(
        5, ge=1, description="Retry-After (seconds) sent with a 503 from intake."
    )

    # --- render --------------------------------------------------------------
    templates_dir: Path = Field(
        PROJECT_ROOT / "templates", description="Folder of email templates (one folder each)."
    )
    default_sender: str = Field(
        "Spillway Shop <no-reply@shop.example>",
        description="From address when the event does not name one.",
    )

    # --- dispatch ------------------------------------------------------------
    provider: Literal["http", "smtp"] = Field(
        "http", description="Which provider adapter the dispatch stage sends through."
    )
    provider_name: str = Field(
        "sim-http", description="Name of the provider, as it appears in results and dead letters."
    )
    provider_http_url: str = Field(
        "http://127.0.0.1:8030",
        description="Base URL of the HTTP provider (SendGrid v3 shaped: POST /v3/mail/send).",
    )
    provider_api_key: SecretStr = Field(
        SecretStr("sim-key"), description="Bearer API key of the HTTP provider."
    )
    provider_timeout_s: float = Field(10.0, gt=0, description="HTTP provider request timeout.")
    smtp_host: str = Field("127.0.0.1", description="SMTP server host.")
    smtp_port: int = Field(2525, description="SMTP server port.")
    smtp_username: str | None = Field(None, description="SMTP AUTH user (none: no AUTH).")
    smtp_password: SecretStr | None = Field(None, description="SMTP AUTH password.")
    smtp_starttls: bool = Field(False, description="Use STARTTLS with the SMTP server.")
    dispatch_batch_size: int = Field(
        256, ge=1, description="Most messages a dispatch lane takes from its stream at once."
    )
    dispatch_batch_within_s: float = Field(
        0.05, gt=0, description="How long a lane waits to fill a batch before sending it."
    )
    dispatch_max_in_flight: int = Field(
        64, ge=1, description="Most concurrent provider requests of one dispatch worker."
    )
    max_attempts: int = Field(
        3, ge=1, description="Attempts of message-specific failures before a dead letter."
    )

    # --- derived -------------------------------------------------------------
    def app_id(self, stage: str | None = None) -> str:
        return f"{self.app_id_prefix}-{stage or self.stage}"

    def topic(self, name: str) -> str:
        return f"{self.topic_namespace}{name}"
