"""One security config for every command (issue 15 point 5): with SASL/TLS and
registry credentials set in SPILLWAY_*, every Kafka client and registry client that
``send``, ``status``, ``dead list/inspect/summary`` and ``dead replay`` build gets them,
exactly as the workers do (settings.kafka.client_config(), settings.registry.client_config()).

Each client class is replaced by a recorder that keeps the config it was given and
then refuses to connect; what the command does after that does not matter here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from app.cli.main import cli
from app.settings import Settings

PASSWORD = "scram-secret-42"
REGISTRY_AUTH = "registry-user:registry-pass"


class Refused(Exception):
    pass


class Recorder:
    """Stands in for Producer, Consumer and AdminClient: records, then refuses."""

    confs: list[tuple[str, dict[str, Any]]] = []

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __call__(self, conf: dict[str, Any]) -> Any:
        Recorder.confs.append((self.kind, dict(conf)))
        from confluent_kafka import KafkaException

        raise KafkaException(f"{self.kind}: refused by the test")


@pytest.fixture
def secure_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    import confluent_kafka
    import confluent_kafka.admin
    from confluent_kafka.schema_registry import SchemaRegistryClient

    ca = tmp_path / "ca.pem"
    ca.write_text("not a real CA: the clients never connect")
    env = {
        "SPILLWAY_KAFKA_BOOTSTRAP": "broker.example:9094",
        "SPILLWAY_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "SPILLWAY_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "SPILLWAY_KAFKA_SASL_USERNAME": "spillway-cli",
        "SPILLWAY_KAFKA_SASL_PASSWORD": PASSWORD,
        "SPILLWAY_KAFKA_SSL_CAFILE": str(ca),
        "SPILLWAY_SCHEMA_REGISTRY_URL": "mock://cli-security",
        "SPILLWAY_SCHEMA_REGISTRY_BASIC_AUTH": REGISTRY_AUTH,
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    Recorder.confs = []
    monkeypatch.setattr(confluent_kafka, "Producer", Recorder("producer"))
    monkeypatch.setattr(confluent_kafka, "Consumer", Recorder("consumer"))
    monkeypatch.setattr(confluent_kafka.admin, "AdminClient", Recorder("admin"))
    registry_confs: list[dict[str, Any]] = []
    real_new_client = SchemaRegistryClient.new_client

    def new_client(conf: dict[str, Any]) -> Any:
        registry_confs.append(dict(conf))
        return real_new_client(conf)

    monkeypatch.setattr(SchemaRegistryClient, "new_client", staticmethod(new_client))
    return {"env": env, "registry": registry_confs, "ca": str(ca)}


def assert_secure(conf: dict[str, Any], ca: str) -> None:
    assert conf["bootstrap.servers"] == "broker.example:9094"
    assert conf["security.protocol"] == "SASL_SSL"
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512"
    assert conf["sasl.username"] == "spillway-cli"
    assert conf["sasl.password"] == PASSWORD
    assert conf["ssl.ca.location"] == ca
    assert conf["ssl.endpoint.identification.algorithm"] == "https"
    # and exactly what the workers' librdkafka config says
    expected = Settings().kafka.client_config()
    assert {k: conf[k] for k in expected} == expected


def run(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args))


def test_send_uses_the_shared_kafka_and_registry_config(secure_env: dict[str, Any]) -> None:
    result = run("send", "-t", "password_reset", "--to", "a@example.com", "--format", "avro")
    assert result.exit_code != 0  # the recorder refused the producer
    assert PASSWORD not in result.output
    kinds = [k for k, _ in Recorder.confs]
    assert kinds == ["producer"], result.output
    assert_secure(Recorder.confs[0][1], secure_env["ca"])
    assert secure_env["registry"], "avro needs the registry"
    for conf in secure_env["registry"]:
        assert conf["basic.auth.user.info"] == REGISTRY_AUTH


def test_status_uses_the_shared_kafka_config(secure_env: dict[str, Any]) -> None:
    result = run("status")
    assert result.exit_code != 0
    assert [k for k, _ in Recorder.confs] == ["admin"], result.output
    assert_secure(Recorder.confs[0][1], secure_env["ca"])
    assert PASSWORD not in result.output


@pytest.mark.parametrize(
    "args", [("dead", "list"), ("dead", "summary"), ("dead", "inspect", "0:1")]
)
def test_dead_letter_inspection_uses_the_shared_config(
    secure_env: dict[str, Any], args: tuple[str, ...]
) -> None:
    result = run(*args)
    assert result.exit_code != 0
    assert [k for k, _ in Recorder.confs] == ["consumer"], result.output
    conf = Recorder.confs[0][1]
    assert_secure(conf, secure_env["ca"])
    assert conf["enable.auto.commit"] is False  # its own settings kept
    assert secure_env["registry"] and all(
        c["basic.auth.user.info"] == REGISTRY_AUTH for c in secure_env["registry"]
    )
    assert PASSWORD not in result.output


def test_replay_sink_uses_the_shared_config(secure_env: dict[str, Any]) -> None:
    from confluent_kafka import KafkaException

    from app.replay import KafkaSink

    with pytest.raises(KafkaException):
        KafkaSink(Settings())
    [(kind, conf)] = Recorder.confs
    assert kind == "admin"
    assert_secure(conf, secure_env["ca"])


def test_replay_producer_keeps_idempotence_and_security(
    secure_env: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import confluent_kafka.admin

    from app.replay import KafkaSink

    monkeypatch.setattr(confluent_kafka.admin, "AdminClient", lambda conf: object())
    with pytest.raises(Exception, match="refused by the test"):
        KafkaSink(Settings())
    [(kind, conf)] = Recorder.confs
    assert kind == "producer"
    assert_secure(conf, secure_env["ca"])
    assert conf["enable.idempotence"] is True and conf["acks"] == "all"


def test_plaintext_default_adds_no_security(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.cli import kafka_config

    for var in ("SPILLWAY_KAFKA_SECURITY_PROTOCOL", "SPILLWAY_SCHEMA_REGISTRY_BASIC_AUTH"):
        monkeypatch.delenv(var, raising=False)
    conf = kafka_config(Settings())
    assert conf["security.protocol"] == "PLAINTEXT"
    assert not [k for k in conf if k.startswith(("sasl.", "ssl."))]
    assert "basic.auth.user.info" not in Settings().registry.client_config()
