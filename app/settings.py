"""The one settings object, in sections.

``Settings`` holds a few process-wide fields (stage, app id, namespace, web server,
templates) and one object per section: ``kafka``, ``registry``, ``intake``,
``providers``, ``policy``, ``observability`` (``settings.kafka.bootstrap``).

Every field is read from the environment as ``SPILLWAY_<FLAT NAME>``, the names of
before the sections: a section field's flat name is the section's ``PREFIX`` plus its
name, or the one its ``FLAT_NAMES`` gives (``kafka.bootstrap`` is
``SPILLWAY_KAFKA_BOOTSTRAP``, ``providers.policies`` is ``SPILLWAY_PROVIDERS``). Flat
names also work as keyword arguments (``Settings(kafka_bootstrap=...)``: the variables'
names) and, deprecated (a ``DeprecationWarning`` names the sectioned form), as attributes
(``settings.kafka_bootstrap``) for the callers written before; code uses the sections
(``tests/unit/test_settings.py`` checks it). Defaults match the local stack started by
``scripts/stack up``. Field descriptions are the configuration reference
(``scripts/gen-config-docs``).

A new setting goes into the section it belongs to (its flat name must stay unique:
``tests/unit/test_settings.py``), or at the top level of ``Settings`` in a commented
block.
"""

from __future__ import annotations

import json
import os
import ssl
import typing
import warnings
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from app.resources import data_path

Stage = Literal["render", "route", "dispatch", "intake", "analyser", "all"]
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ProviderPolicy(BaseModel):
    """One email provider: how to reach it and how hard to push it.

    Durations are seconds and can be scaled down in tests. The quota is the
    provider's; Spillway aims at ``quota_per_s * target_utilisation`` across all
    dispatch workers together (see app/stages/pressure.py for how it is shared).
    """

    name: str = Field(description="Provider name, as it appears in results and dead letters.")
    kind: Literal["http", "smtp"] = Field("http", description="Adapter: http or smtp.")
    url: str = Field("http://127.0.0.1:8030", description="HTTP API base URL (SendGrid v3).")
    api_key: SecretStr = Field(SecretStr("sim-key"), description="HTTP API bearer key.")
    smtp_host: str = Field("127.0.0.1", description="SMTP host.")
    smtp_port: int = Field(2525, description="SMTP port.")
    smtp_username: str | None = Field(None, description="SMTP AUTH user (none: no AUTH).")
    smtp_password: SecretStr | None = Field(None, description="SMTP AUTH password.")
    smtp_starttls: bool = Field(False, description="Use STARTTLS.")
    smtp_resend_in_flight: bool = Field(
        False,
        description="After a crash, resend SMTP messages found in flight (may duplicate). "
        "Default: dead-letter them with reason ambiguous.",
    )
    timeout_s: float = Field(10.0, gt=0, description="Request timeout.")
    max_in_flight: int = Field(64, ge=1, description="Most concurrent requests per worker.")
    max_unrecorded: int = Field(
        256,
        ge=1,
        description="Most emails per worker that the provider may have accepted while "
        "Kafka has not yet acknowledged the ledger's record of it (requests on the wire "
        "included; never below max_in_flight). At a crash this many at most are resent "
        "with their key, or parked as ambiguous for keyless providers. Larger: more "
        "throughput when Kafka's acks are slow.",
    )
    quota_per_s: float | None = Field(
        None, gt=0, description="Provider quota, messages per second (none: unlimited)."
    )
    quota_per_day: int | None = Field(
        None, ge=1, description="Daily quota (informative; the provider's Remaining rules)."
    )
    target_utilisation: float = Field(
        0.85, gt=0, le=1, description="Share of the quota Spillway aims to use."
    )
    critical_reserve: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Share of the quota above the target that only critical mail may use "
        "(critical can reach quota x min(1, target + reserve)).",
    )
    remaining_threshold: int = Field(
        100,
        ge=0,
        description="When the provider's X-RateLimit-Remaining falls below this, bulk is held "
        "and normal slowed until the reset; critical keeps flowing.",
    )
    breaker_error_threshold: float = Field(
        0.05, ge=0, le=1, description="Error rate over the window that opens the breaker."
    )
    breaker_window_s: float = Field(60.0, gt=0, description="Breaker's sliding window.")
    breaker_min_requests: int = Field(
        20, ge=1, description="Requests in the window before the breaker may open."
    )
    breaker_cooldown_s: float = Field(30.0, gt=0, description="How long an open breaker waits.")
    breaker_half_open_probes: int = Field(
        3, ge=1, description="Successful probes that close a half-open breaker."
    )
    retry_backoff_base_s: float = Field(1.0, gt=0, description="First retry delay (doubles).")
    retry_backoff_cap_s: float = Field(60.0, gt=0, description="Longest retry delay.")
    fallback: str | None = Field(
        None, description="Provider to use while this one's breaker is open (none: wait)."
    )

    # --- issue 13 (helper C): strict provider answers, long retries, honest guarantees ---
    retry_after_min_s: float = Field(
        1.0,
        gt=0,
        description="Shortest pause after a 429 (Retry-After 0 or a past date waits this long).",
    )
    retry_after_max_s: float = Field(
        900.0,
        gt=0,
        description="Longest pause any provider header can impose (Retry-After, "
        "X-RateLimit-Reset): no answer stops mail, critical included, for longer.",
    )
    retry_min_failing_s: float = Field(
        900.0,
        ge=0,
        description="A transient failure dead-letters an email only once it has been failing "
        "this long and max_attempts is reached (backoff with jitter in between).",
    )
    idempotency_ttl_s: float | None = Field(
        None,
        ge=0,
        description="How long the provider honours our idempotency key (0: it does not; none: "
        "the adapter's declaration, 0 for SendGrid-shaped http and for smtp). Resend: 86400.",
    )
    ambiguous_resend: bool = Field(
        False,
        description="After an ambiguous failure (request sent, answer lost) with no valid "
        "idempotency key: false parks the email as a dead letter with reason ambiguous "
        "(at most once); true resends it (at least once, may duplicate).",
    )

    @property
    def rate_per_s(self) -> float | None:
        return self.quota_per_s * self.target_utilisation if self.quota_per_s else None


class Section(BaseModel):
    """A group of settings. Each field is still read from ``SPILLWAY_<FLAT NAME>``: the
    section's prefix plus the field name (``PREFIX``), or the name in ``FLAT_NAMES``."""

    model_config = ConfigDict(extra="forbid")

    PREFIX: ClassVar[str] = ""
    FLAT_NAMES: ClassVar[dict[str, str]] = {}

    @classmethod
    def flat_name(cls, short: str) -> str:
        """The flat setting name of field ``short`` (its variable: SPILLWAY_<FLAT NAME>)."""
        return cls.FLAT_NAMES.get(short, cls.PREFIX + short)


class KafkaSettings(Section):
    """Kafka: brokers, topics, producer and consumer tuning, and security. Used by the
    workers (Faust/aiokafka) and by the CLI (confluent-kafka) alike."""

    PREFIX: ClassVar[str] = "kafka_"
    FLAT_NAMES: ClassVar[dict[str, str]] = {
        "topic_partitions": "topic_partitions",
        "topic_replication": "topic_replication",
        "store": "store",
        "producer_linger_ms": "producer_linger_ms",
        "producer_compression": "producer_compression",
        "producer_batch_bytes": "producer_batch_bytes",
        "commit_interval_s": "commit_interval_s",
        "session_timeout_s": "session_timeout_s",
    }

    bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers.")
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
    producer_linger_ms: int = Field(
        20,
        ge=0,
        description="How long the producer waits to fill a batch of pipeline output "
        "(Kafka Streams uses 100). Fewer, larger produce requests for a few ms per hop.",
    )
    producer_compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field(
        "lz4",
        description="Compression of pipeline output. Rendered HTML shrinks about 12x with "
        "lz4 for a few microseconds each, which saves more CPU (socket and broker work) "
        "than it costs.",
    )
    producer_batch_bytes: int = Field(
        262_144,
        ge=1024,
        description="Largest producer batch per partition. A rendered email is a few kB, "
        "so Kafka's 16 kB default would fill after a handful and send a request each.",
    )
    commit_interval_s: float = Field(
        1.0,
        gt=0,
        description="How often consumed offsets are committed (after flushing everything "
        "produced). Shorter: less work redone after a crash.",
    )
    session_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Consumer group session timeout: how long a worker that died without "
        "leaving keeps its partitions before they move to the others.",
    )
    max_poll_records: int = Field(
        500,
        ge=1,
        description="Most records one fetch hands a worker (Faust's broker_max_poll_records; "
        "unbounded by default). Kept below a stream buffer's headroom, so a full bulk "
        "buffer never blocks delivery of the critical records fetched with it.",
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT",
        description="How to talk to the brokers: PLAINTEXT, SSL (TLS), SASL_PLAINTEXT or "
        "SASL_SSL (SASL over TLS: the usual choice for managed Kafka).",
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "PLAIN", description="SASL mechanism (SASL_* protocols only)."
    )
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(None, description="SASL password.")
    ssl_cafile: Path | None = Field(
        None,
        description="CA bundle (PEM) that signed the brokers' certificates; none: the system "
        "trust store.",
    )
    ssl_certfile: Path | None = Field(
        None, description="Client certificate (PEM) for mutual TLS; needs kafka_ssl_keyfile."
    )
    ssl_keyfile: Path | None = Field(None, description="Client private key (PEM).")
    ssl_key_password: SecretStr | None = Field(
        None, description="Password of the client private key, if it is encrypted."
    )
    ssl_check_hostname: bool = Field(
        True, description="Check that the broker's certificate names the host we connect to."
    )

    # Checked on use, not by a pydantic validator: its errors quote every input, secrets too.
    def check_security(self) -> None:
        if self.security_protocol.startswith("SASL") and not (
            self.sasl_username and self.sasl_password
        ):
            raise ValueError(
                f"kafka_security_protocol={self.security_protocol} needs "
                "kafka_sasl_username and kafka_sasl_password"
            )
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("kafka_ssl_certfile and kafka_ssl_keyfile go together")

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for SSL and SASL_SSL; None for the plaintext protocols."""
        self.check_security()
        if not self.security_protocol.endswith("SSL"):
            return None
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH,
            cafile=str(self.ssl_cafile) if self.ssl_cafile else None,
        )
        context.check_hostname = self.ssl_check_hostname
        if self.ssl_certfile and self.ssl_keyfile:
            password = self.ssl_key_password
            context.load_cert_chain(
                str(self.ssl_certfile),
                str(self.ssl_keyfile),
                password.get_secret_value() if password else None,
            )
        return context

    def credentials(self) -> Any:
        """Faust's ``broker_credentials`` for these settings (None: PLAINTEXT)."""
        import faust

        self.check_security()
        protocol = self.security_protocol
        if protocol == "PLAINTEXT":
            return None
        if protocol == "SSL":
            return faust.SSLCredentials(self.ssl_context())
        assert self.sasl_password is not None  # check_security
        return faust.SASLCredentials(
            username=self.sasl_username,
            password=self.sasl_password.get_secret_value(),
            ssl_context=self.ssl_context(),  # None: SASL_PLAINTEXT, else SASL_SSL
            mechanism=self.sasl_mechanism,
        )

    def client_config(self) -> dict[str, str]:
        """librdkafka (confluent-kafka) settings: bootstrap plus security. Holds secrets."""
        self.check_security()
        conf = {
            "bootstrap.servers": self.bootstrap,
            "security.protocol": self.security_protocol,
        }
        if self.security_protocol.startswith("SASL"):
            assert self.sasl_password is not None
            conf["sasl.mechanism"] = self.sasl_mechanism
            conf["sasl.username"] = self.sasl_username or ""
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        if self.security_protocol.endswith("SSL"):
            if self.ssl_cafile:
                conf["ssl.ca.location"] = str(self.ssl_cafile)
            if self.ssl_certfile and self.ssl_keyfile:
                conf["ssl.certificate.location"] = str(self.ssl_certfile)
                conf["ssl.key.location"] = str(self.ssl_keyfile)
            if self.ssl_key_password:
                conf["ssl.key.password"] = self.ssl_key_password.get_secret_value()
            conf["ssl.endpoint.identification.algorithm"] = (
                "https" if self.ssl_check_hostname else "none"
            )
        return conf


class RegistrySettings(Section):
    """The Schema Registry (Confluent-compatible API): where, how long to wait, credentials."""

    PREFIX: ClassVar[str] = "schema_registry_"
    FLAT_NAMES: ClassVar[dict[str, str]] = {
        "outage_max_s": "registry_outage_max_s",
    }

    url: str = Field(
        "http://127.0.0.1:8081/apis/ccompat/v7",
        description="Confluent-compatible Schema Registry base URL (Apicurio: /apis/ccompat/v7).",
    )
    timeout_s: float = Field(
        10.0,
        gt=0,
        description="Timeout of one Schema Registry request; a timed-out request is retried "
        "on a new connection (confluent-kafka's max.retries). Without one, a lost response "
        "would hang the worker.",
    )
    outage_max_s: float = Field(
        900.0,
        ge=0,
        description="How long a stage waits for an unreachable Schema Registry (retrying with "
        "backoff, 0.5 s doubling to 10 s) when it needs a writer schema it has not cached; "
        "then the worker stops without acking (an infrastructure fault). 0: wait forever. "
        "Only a schema id the registry does not know dead-letters an event (undecodable).",
    )
    basic_auth: SecretStr | None = Field(
        None,
        description="Schema Registry credentials as 'user:password' (HTTP basic auth); used "
        "by the workers and every CLI command alike.",
    )
    ssl_cafile: Path | None = Field(
        None, description="CA bundle (PEM) for an https:// Schema Registry; none: system store."
    )

    def client_config(self) -> dict[str, Any]:
        """confluent-kafka SchemaRegistryClient settings: URL, timeout, credentials."""
        conf: dict[str, Any] = {"url": self.url, "timeout": self.timeout_s}
        if self.basic_auth is not None:
            conf["basic.auth.user.info"] = self.basic_auth.get_secret_value()
        if self.ssl_cafile is not None:
            conf["ssl.ca.location"] = str(self.ssl_cafile)
        return conf


class IntakeSettings(Section):
    """The HTTP intake (stage intake): limits, authentication, integrations and their scopes."""

    PREFIX: ClassVar[str] = "intake_"

    linger_ms: int = Field(
        1,
        ge=0,
        description="Producer linger of an intake worker (stage intake): each request waits "
        "for its ack, so the pipeline's linger would add to every answer.",
    )
    max_body_bytes: int = Field(
        1_048_576, ge=1, description="Largest HTTP intake request body accepted (bytes)."
    )
    max_batch: int = Field(1000, ge=1, description="Most events in one batch request.")
    ack_timeout_s: float = Field(
        10.0, gt=0, description="How long intake waits for the broker's ack before answering 503."
    )
    retry_after_s: int = Field(
        5, ge=1, description="Retry-After (seconds) sent with a 503 from intake."
    )
    auth: Literal["required", "off"] = Field(
        "required",
        description="'required': every intake request must name its integration with an API "
        "key (Authorization: Bearer <key>, or X-Api-Key) or an HMAC signature "
        "(X-Spillway-Integration, X-Spillway-Timestamp, X-Spillway-Signature); 'off': no "
        "checks, for local development only.",
    )
    api_keys: dict[str, SecretStr] = Field(
        default_factory=dict,
        description='Integrations and their secrets, as a JSON object {"shop-backend": '
        '"<secret>", ...}. A secret is the integration\'s API key and its HMAC-SHA256 signing '
        "key; the integration's name becomes the source of every event it sends. No "
        "integrations with intake_auth=required: every request is refused (401).",
    )
    signature_max_age_s: int = Field(
        300,
        ge=1,
        description="HMAC requests: how far X-Spillway-Timestamp may be from the intake's clock "
        "(seconds, either way); bounds the replay of a captured request.",
    )
    rate_per_s: float = Field(
        2000.0,
        ge=0,
        description="Events per second each integration may append, per intake worker (token "
        "bucket; a batch costs one token per event). Above it: 429 with Retry-After. "
        "0: unlimited.",
    )
    rate_burst: int = Field(
        20000,
        ge=1,
        description="Token bucket size: how many events an integration may send at once "
        "before intake_rate_per_s applies.",
    )
    rate_limits: dict[str, Annotated[float, Field(ge=0, allow_inf_nan=False)]] = Field(
        default_factory=dict,
        description="Per-integration override of intake_rate_per_s (a finite number, 0 or "
        'more), as JSON {"newsletter-tool": 50}.',
    )
    integrations: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Scope of each intake integration, as JSON {\"shop-backend\": "
        '{"templates": ["order_confirmation"], "from_addresses": ["shop.example"], '
        '"max_priority": "normal", "rate_per_s": 50}}; every key optional (see '
        "app/scopes.py and docs/intake.md). An integration with a secret in "
        "intake_api_keys and no entry here is unrestricted; an entry without a secret "
        "stops the intake at start.",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        allow_inf_nan=False,
        description="How long intake waits for a request body to arrive in full (slow "
        "clients get 408).",
    )
    max_json_depth: int = Field(
        65,
        ge=1,
        le=500,
        description="Deepest nesting of one event (1: a flat object); deeper gets 400. The "
        "default is what render accepts (the event plus 64 levels of template data).",
    )
    max_json_values: int = Field(
        10_000,
        ge=1,
        description="Most keys plus array items in one event; more gets 400.",
    )

    def scopes(self) -> dict[str, Any]:
        """integrations parsed: integration -> app.scopes.Scope (ValueError if bad)."""
        from app.scopes import parse_scopes

        return parse_scopes(self.integrations)


class ProvidersSettings(Section):
    """Email providers: a list of policies, or one provider built from the single-provider
    fields below (when the list is empty)."""

    PREFIX: ClassVar[str] = "provider_"
    FLAT_NAMES: ClassVar[dict[str, str]] = {
        "kind": "provider",
        "policies": "providers",
        "smtp_host": "smtp_host",
        "smtp_port": "smtp_port",
        "smtp_username": "smtp_username",
        "smtp_password": "smtp_password",
        "smtp_starttls": "smtp_starttls",
    }

    policies: list[ProviderPolicy] = Field(
        default_factory=list,
        description="Providers with their policies, as a JSON list of ProviderPolicy objects "
        "(see app/settings.py); the first is the primary, others serve as fallbacks. Empty: "
        "one provider built from the provider_* and smtp_* fields above.",
    )
    kind: Literal["http", "smtp"] = Field(
        "http", description="Which provider adapter the dispatch stage sends through."
    )
    name: str = Field(
        "sim-http", description="Name of the provider, as it appears in results and dead letters."
    )
    http_url: str = Field(
        "http://127.0.0.1:8030",
        description="Base URL of the HTTP provider (SendGrid v3 shaped: POST /v3/mail/send).",
    )
    api_key: SecretStr = Field(
        SecretStr("sim-key"), description="Bearer API key of the HTTP provider."
    )
    timeout_s: float = Field(10.0, gt=0, description="HTTP provider request timeout.")
    idempotency_key_ttl_s: float | None = Field(
        None,
        ge=0,
        description="The single provider's idempotency_ttl_s (see ProviderPolicy): how long it "
        "honours our idempotency key; none: the adapter's declaration (0 for http and smtp). "
        "The provider simulator in its default mode honours keys: 86400.",
    )
    smtp_host: str = Field("127.0.0.1", description="SMTP server host.")
    smtp_port: int = Field(2525, description="SMTP server port.")
    smtp_username: str | None = Field(None, description="SMTP AUTH user (none: no AUTH).")
    smtp_password: SecretStr | None = Field(None, description="SMTP AUTH password.")
    smtp_starttls: bool = Field(False, description="Use STARTTLS with the SMTP server.")
    idempotency_ttl_s: float = Field(
        24 * 3600.0,
        ge=0,
        description="Longest idempotency-key lifetime among the HTTP providers (Resend: "
        "24 h); the ledger horizon is never shorter.",
    )


class PolicySettings(Section):
    """How the pipeline treats mail: attempts, batches and bounds of the stages, the
    sent-ledger's horizon, retention of the topics and PII redaction."""

    PREFIX: ClassVar[str] = ""

    max_attempts: int = Field(
        3, ge=1, description="Attempts of message-specific failures before a dead letter."
    )
    dispatch_batch_size: int = Field(
        256,
        ge=1,
        description="Most outputs of one dispatch worker produced as one batch (and "
        "their sent-ledger marks confirmed in one call).",
    )
    dispatch_batch_within_s: float = Field(
        0.02,
        ge=0,
        description="How long a dispatch output batch waits for more outputs after its "
        "first before it is produced (0: at once; batches still form while earlier ones "
        "await their acks).",
    )
    dispatch_max_in_flight: int = Field(
        64, ge=1, description="Most concurrent provider requests of one dispatch worker."
    )
    dispatch_max_unrecorded: int = Field(
        256,
        ge=1,
        description="Most provider acceptances of one dispatch worker not yet acknowledged "
        "by Kafka in the sent-ledger (requests on the wire included): what a crash can "
        "leave to resend with its key or to park as ambiguous (docs/guarantees.md).",
    )
    dispatch_lane_in_flight: int = Field(
        256,
        ge=1,
        description="Most messages one dispatch lane handles at once (each waits for its "
        "turn, pace and reply on its own: a slow request holds one of these slots).",
    )
    dispatch_revoke_bound_s: float = Field(
        5.0,
        gt=0,
        description="On a rebalance, how long requests already on the wire may finish "
        "before the rest of the revoked partitions' work is abandoned uncommitted (capped "
        "at a third of the session timeout).",
    )
    shutdown_bound_s: float = Field(
        30.0,
        gt=0,
        description="SIGTERM: the worker stops within this bound; work not done by then "
        "is left uncommitted. A second SIGTERM stops it at once.",
    )
    dedupe_horizon_s: float = Field(
        7 * 24 * 3600.0,
        gt=0,
        description="How long the sent-ledger remembers an event id (then it expires).",
    )
    state_flush_s: float = Field(
        0.5, gt=0, description="How often rate-meter state is written to its changelog table."
    )
    stage_batch_size: int = Field(
        256,
        ge=1,
        description="Most records render and route handle per batch; the batch's input is "
        "acked only after Kafka acknowledged every output (acks=all).",
    )
    stage_batch_within_s: float = Field(
        0.005,
        gt=0,
        description="How long render and route wait to fill a batch.",
    )
    stage_batches_in_flight: int = Field(
        16,
        ge=1,
        description="Batches of one render or route agent (or of a dispatch worker's "
        "outputs) that may await Kafka's acks while it works on the next (1: each batch "
        "waits for its acks first). Inputs are still acked only after their outputs; "
        "commits stay a contiguous prefix.",
    )
    max_output_bytes: int = Field(
        990_000,
        ge=10_000,
        description="Largest record (value plus key) render and route produce; a larger "
        "output is dead-lettered with reason too_large. Keep it below the producer's maximum "
        "request size (1,000,000, Faust's default) and the topics' max.message.bytes.",
    )
    retention_events_hours: float = Field(
        72.0,
        gt=0,
        le=87_600,
        allow_inf_nan=False,
        description="retention.ms of the in-flight topics (email.raw-events, email.rendered, "
        "the dispatch lanes and retry topics), in hours. They hold recipients and template "
        "data: keep it as short as an outage you want to survive (3 days by default).",
    )
    retention_sent_hours: float = Field(
        168.0,
        gt=0,
        le=87_600,
        allow_inf_nan=False,
        description="retention.ms of email.sent (send results), in hours.",
    )
    retention_dead_days: float = Field(
        14.0,
        gt=0,
        le=3650,
        allow_inf_nan=False,
        description="retention.ms of email.dead, in days: how long a dead letter (which "
        "quotes the event, recipients included) can be inspected and replayed.",
    )
    redact_pii: bool = Field(
        False,
        description="Redact recipients and template data: dead letters keep their metadata "
        "(reason, stage, template, source, ids) but not the event itself (payload emptied, "
        "addresses in messages masked), and log lines mask addresses. Replay of render and "
        "route dead letters is then impossible (nothing to replay).",
    )


class ObservabilitySettings(Section):
    """Metrics, the status page (app/metrics.py, app/status.py) and the dead-letter
    analyser (app/agents/deadletters.py)."""

    PREFIX: ClassVar[str] = ""

    metrics_lag_every_s: float = Field(
        5.0,
        gt=0,
        description="How often a worker measures its consumer lag (end offsets of its "
        "assigned partitions against the group's committed offsets) and utilisation.",
    )
    metrics_slope_window_s: float = Field(
        30.0, gt=0, description="Window of the lag slope (least squares, messages per second)."
    )
    metrics_peers: str = Field(
        "",
        description="Comma-separated base URLs of other workers (e.g. "
        "'http://dispatch-0:6069,http://route-0:6068') whose /metrics this worker's /status "
        "page merges with its own. Empty: the page shows this worker only.",
    )
    analyser_bucket_s: int = Field(
        60,
        ge=1,
        description="Width of the analyser's count buckets; windows are whole buckets, so "
        "this is their resolution.",
    )
    analyser_retention_s: int = Field(
        86_400, ge=60, description="How long bucketed dead-letter counts are kept (longest window)."
    )
    analyser_windows: str = Field(
        "5m,1h,24h",
        description="Windows exported as metrics (comma separated); the first is the default "
        "of GET /dead-letters/summary.",
    )
    analyser_alert_count: int = Field(
        100,
        ge=0,
        description="Alert signal when this many dead letters arrive within "
        "analyser_alert_count_window (0: off).",
    )
    analyser_alert_count_window: str = Field("1h", description="Window of the count alert.")
    analyser_alert_rate_per_min: float = Field(
        20.0,
        ge=0,
        description="Alert signal when dead letters per minute over analyser_alert_rate_window "
        "reach this (0: off).",
    )
    analyser_alert_rate_window: str = Field("5m", description="Window of the rate alert.")
    analyser_metrics_every_s: float = Field(
        10.0, gt=0, description="How often the analyser refreshes its gauges and alert signal."
    )


#: section attribute of Settings -> its class
SECTIONS: dict[str, type[Section]] = {
    "kafka": KafkaSettings,
    "registry": RegistrySettings,
    "intake": IntakeSettings,
    "providers": ProvidersSettings,
    "policy": PolicySettings,
    "observability": ObservabilitySettings,
}
#: flat setting name (the pre-sections attribute, SPILLWAY_<NAME>) -> (section, field)
FLAT: dict[str, tuple[str, str]] = {
    cls.flat_name(short): (section, short)
    for section, cls in SECTIONS.items()
    for short in cls.model_fields
}


def _is_complex(annotation: Any) -> bool:
    """A field given as JSON in its variable (lists, maps, models)."""
    origin = typing.get_origin(annotation)
    if origin in (list, dict, tuple, set):
        return True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True
    return any(_is_complex(a) for a in typing.get_args(annotation) if origin is not Literal)


class _SectionsFromFlatEnv(PydanticBaseSettingsSource):
    """Reads every section field from its flat variable ``SPILLWAY_<FLAT NAME>``."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # not used: __call__ reads the sections at once

    def __call__(self) -> dict[str, Any]:
        env = {k.upper(): v for k, v in os.environ.items() if k.upper().startswith("SPILLWAY_")}
        found: dict[str, Any] = {}
        for flat, (section, short) in FLAT.items():
            variable = f"SPILLWAY_{flat.upper()}"
            if variable not in env:
                continue
            raw: Any = env[variable]
            if _is_complex(SECTIONS[section].model_fields[short].annotation):
                try:
                    raw = json.loads(raw)
                except json.JSONDecodeError as exc:  # never quote the value: maybe a secret
                    raise ValueError(f"{variable} is not valid JSON: {exc.msg}") from None
                except RecursionError:
                    raise ValueError(f"{variable} is nested too deeply") from None
            found.setdefault(section, {})[short] = raw
        return found


class _TopLevelEnv(EnvSettingsSource):
    """pydantic-settings' variables for the top-level fields only: a section is read from
    its fields' flat variables (``SPILLWAY_PROVIDERS`` is the providers' policy list)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        if field_name in SECTIONS:
            return None, field_name, False
        return super().get_field_value(field, field_name)


class Settings(BaseSettings):
    """Top-level process settings plus one object per section: ``settings.kafka``,
    ``settings.registry``, ``settings.intake``, ``settings.providers``,
    ``settings.policy``, ``settings.observability``.

    Flat names keep working, as attributes and as keyword arguments:
    ``settings.kafka_bootstrap`` is ``settings.kafka.bootstrap`` and
    ``Settings(kafka_bootstrap=...)`` sets it (one exception: ``settings.providers`` is
    the section; the policy list is ``settings.providers.policies``). New code uses the
    sections; ``FLAT`` maps every flat name to its place.
    """

    model_config = SettingsConfigDict(env_prefix="SPILLWAY_", extra="ignore")

    # --- process -----------------------------------------------------------
    stage: Stage = Field(
        "all",
        description="Which stage this worker runs: render, route, dispatch, intake, analyser "
        "(dead letters), or all (dev mode: every stage in one process). Each stage has its "
        "own app id, hence its own consumer group.",
    )
    app_id_prefix: str = Field(
        "spillway", description="Prefix of the Faust app id; the app id is '<prefix>-<stage>'."
    )
    topic_namespace: str = Field(
        "",
        description="Optional prefix put before every topic name (e.g. 'staging.'), so several "
        "pipelines can share one cluster. Empty in production.",
    )
    data_dir: Path = Field(
        PROJECT_ROOT / "var" / "faust",
        description="Faust's data folder (one subfolder per app id).",
    )
    startup_checks: bool = Field(
        True,
        description="At start, compare existing topics with the topology (partition count, "
        "cleanup policy) and stop with one message listing every mismatch.",
    )
    worker_nice: int = Field(
        0,
        ge=0,
        le=19,
        description="Lower this worker's CPU priority by this much at start (Unix niceness, "
        "0: unchanged). When every stage shares one machine, render and route at 10 leave "
        "dispatch the CPU it needs to keep the provider's pace through a burst "
        "(docs/capacity.md).",
    )

    # --- web (Faust's web server: intake, health, metrics) ------------------
    web_host: str = Field("127.0.0.1", description="Address the worker's web server binds to.")
    web_port: int | None = Field(
        None,
        description="Port of the worker's web server; default by stage: all 6066, render 6067, "
        "route 6068, dispatch 6069, analyser 6070, intake 8080.",
    )

    # --- render --------------------------------------------------------------
    templates_dir: Path = Field(
        data_path("templates"),  # the repository's templates/, or the wheel's app/templates
        description="Folder of email templates (one folder each).",
    )
    default_sender: str = Field(
        "Spillway Shop <no-reply@shop.example>",
        description="From address when the event does not name one.",
    )

    # --- sections (each field is read from its flat variable, see SECTIONS) ----
    kafka: KafkaSettings = Field(default_factory=KafkaSettings, description="Kafka.")
    registry: RegistrySettings = Field(
        default_factory=RegistrySettings, description="Schema Registry."
    )
    intake: IntakeSettings = Field(default_factory=IntakeSettings, description="HTTP intake.")
    providers: ProvidersSettings = Field(
        default_factory=ProvidersSettings, description="Email providers."
    )
    policy: PolicySettings = Field(default_factory=PolicySettings, description="Mail policy.")
    observability: ObservabilitySettings = Field(
        default_factory=ObservabilitySettings, description="Metrics and the analyser."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # keyword arguments first, then the variables (sections from their flat names)
        return (
            init_settings,
            _SectionsFromFlatEnv(settings_cls),
            _TopLevelEnv(settings_cls),
            dotenv_settings,
            file_secret_settings,
        )

    @model_validator(mode="before")
    @classmethod
    def _flat_names_into_sections(cls, data: Any) -> Any:
        """``Settings(kafka_bootstrap=...)``: a flat keyword goes into its section (over
        what the environment said); ``providers=[...]`` is the policy list."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if isinstance(data.get("providers"), list):
            data["providers"] = {"policies": data["providers"]}
        for name in [n for n in data if n in FLAT and n not in cls.model_fields]:
            section, short = FLAT[name]
            current = data.get(section)
            if isinstance(current, BaseModel):
                current = {k: getattr(current, k) for k in type(current).model_fields}
            merged = dict(current or {})
            merged[short] = data.pop(name)
            data[section] = merged
        return data

    def __getattr__(self, name: str) -> Any:
        where = FLAT.get(name)
        if where is not None:  # a flat name: settings.kafka_bootstrap
            _flat_warning(f"settings.{name}", f"settings.{where[0]}.{where[1]}")
            return getattr(getattr(self, where[0]), where[1])
        return super().__getattr__(name)  # type: ignore[misc]

    def __setattr__(self, name: str, value: Any) -> None:
        where = FLAT.get(name)
        if where is not None and name not in type(self).model_fields:
            _flat_warning(f"settings.{name}", f"settings.{where[0]}.{where[1]}")
            setattr(getattr(self, where[0]), where[1], value)
            return
        super().__setattr__(name, value)

    @classmethod
    def env_names(cls) -> list[str]:
        """Every setting's flat name (its variable is SPILLWAY_<NAME>): top-level fields
        and section fields."""
        return [n for n in cls.model_fields if n not in SECTIONS] + list(FLAT)

    # --- derived -------------------------------------------------------------
    def provider_policies(self) -> list[ProviderPolicy]:
        p = self.providers
        if p.policies:
            return list(p.policies)
        return [
            ProviderPolicy(
                name=p.name,
                kind=p.kind,
                url=p.http_url,
                api_key=p.api_key,
                smtp_host=p.smtp_host,
                smtp_port=p.smtp_port,
                smtp_username=p.smtp_username,
                smtp_password=p.smtp_password,
                smtp_starttls=p.smtp_starttls,
                timeout_s=p.timeout_s,
                max_in_flight=self.policy.dispatch_max_in_flight,
                max_unrecorded=self.policy.dispatch_max_unrecorded,
                idempotency_ttl_s=p.idempotency_key_ttl_s,
            )
        ]

    def app_id(self, stage: str | None = None) -> str:
        return f"{self.app_id_prefix}-{stage or self.stage}"

    def topic(self, name: str) -> str:
        return f"{self.topic_namespace}{name}"

    def ledger_horizon_s(self) -> float:
        """The sent-ledger's dedupe horizon: never shorter than a provider's key lifetime."""
        keyed = any(p.kind == "http" for p in self.provider_policies())
        horizon = self.policy.dedupe_horizon_s
        return max(horizon, self.providers.idempotency_ttl_s if keyed else 0.0)

    def revoke_bound(self) -> float:
        return min(self.policy.dispatch_revoke_bound_s, self.kafka.session_timeout_s / 3)

    # --- flat-name methods (callers before the sections; deprecated) ---------
    def kafka_ssl_context(self) -> ssl.SSLContext | None:
        _flat_warning("settings.kafka_ssl_context()", "settings.kafka.ssl_context()")
        return self.kafka.ssl_context()

    def kafka_credentials(self) -> Any:
        _flat_warning("settings.kafka_credentials()", "settings.kafka.credentials()")
        return self.kafka.credentials()

    def kafka_client_config(self) -> dict[str, str]:
        _flat_warning("settings.kafka_client_config()", "settings.kafka.client_config()")
        return self.kafka.client_config()

    def registry_client_config(self) -> dict[str, Any]:
        _flat_warning("settings.registry_client_config()", "settings.registry.client_config()")
        return self.registry.client_config()

    def intake_scopes(self) -> dict[str, Any]:
        _flat_warning("settings.intake_scopes()", "settings.intake.scopes()")
        return self.intake.scopes()


def _flat_warning(old: str, new: str) -> None:
    """Flat attribute names (and their methods) are deprecated in code: a
    DeprecationWarning names the sectioned one, pointing at the caller's line. The
    ``SPILLWAY_*`` variables and ``Settings(<flat name>=...)`` keywords are the
    configuration's names and stay without a warning."""
    warnings.warn(
        f"{old} is a flat setting name: use {new}", DeprecationWarning, stacklevel=3
    )
