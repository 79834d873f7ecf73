"""Kafka SASL / TLS settings: what the workers (Faust, aiokafka) and the CLI (librdkafka) get."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import faust
import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from app.settings import Settings

PASSWORD = "kafka-password-123"


def test_plaintext_is_the_default() -> None:
    s = Settings()
    assert s.kafka.credentials() is None
    assert s.kafka.client_config() == {
        "bootstrap.servers": "127.0.0.1:9092",
        "security.protocol": "PLAINTEXT",
    }


def test_sasl_ssl_scram() -> None:
    s = Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="spillway",
        kafka_sasl_password=PASSWORD,  # type: ignore[arg-type]
    )
    auth = credentials_to_aiokafka_auth(s.kafka.credentials())
    assert auth["security_protocol"] == "SASL_SSL"
    assert auth["sasl_mechanism"] == "SCRAM-SHA-512"
    assert auth["sasl_plain_username"] == "spillway"
    assert auth["sasl_plain_password"] == PASSWORD
    assert isinstance(auth["ssl_context"], ssl.SSLContext)
    assert auth["ssl_context"].check_hostname
    conf = s.kafka.client_config()
    assert conf["security.protocol"] == "SASL_SSL"
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512"
    assert conf["sasl.password"] == PASSWORD
    assert conf["ssl.endpoint.identification.algorithm"] == "https"
    assert PASSWORD not in repr(s) and PASSWORD not in repr(s.kafka.credentials())


def test_sasl_plaintext_has_no_tls() -> None:
    s = Settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_username="u",
        kafka_sasl_password=PASSWORD,  # type: ignore[arg-type]
    )
    auth = credentials_to_aiokafka_auth(s.kafka.credentials())
    assert (auth["security_protocol"], auth["sasl_mechanism"]) == ("SASL_PLAINTEXT", "PLAIN")
    assert auth["ssl_context"] is None
    assert "ssl.endpoint.identification.algorithm" not in s.kafka.client_config()


def test_sasl_without_credentials_is_refused_without_quoting_secrets() -> None:
    s = Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_password=PASSWORD,  # type: ignore[arg-type]
    )
    with pytest.raises(ValueError, match="needs kafka_sasl_username") as info:
        s.kafka.credentials()
    assert PASSWORD not in str(info.value)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_mutual_tls(tmp_path: Path) -> None:
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=spillway-test",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    s = Settings(
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=cert,
        kafka_ssl_certfile=cert,
        kafka_ssl_keyfile=key,
        kafka_ssl_check_hostname=False,
    )
    creds = s.kafka.credentials()
    assert isinstance(creds, faust.SSLCredentials)
    auth = credentials_to_aiokafka_auth(creds)
    assert auth["security_protocol"] == "SSL"
    assert auth["ssl_context"].check_hostname is False
    conf = s.kafka.client_config()
    assert conf["ssl.ca.location"] == str(cert)
    assert conf["ssl.key.location"] == str(key)
    assert conf["ssl.endpoint.identification.algorithm"] == "none"
    with pytest.raises(ValueError, match="go together"):
        Settings(kafka_security_protocol="SSL", kafka_ssl_certfile=cert).kafka.client_config()


def test_the_app_gets_the_credentials() -> None:
    from app.factory import create_app

    s = Settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_username="u",
        kafka_sasl_password=PASSWORD,  # type: ignore[arg-type]
        stage="render",
        schema_registry_url="mock://sec",
    )
    app = create_app(s)
    assert isinstance(app.conf.broker_credentials, faust.SASLCredentials)
    assert app.conf.broker_credentials.username == "u"


def test_registry_credentials_reach_the_registry_client(tmp_path: Path) -> None:
    import certifi
    from confluent_kafka.schema_registry import SchemaRegistryClient

    from app.runtime import registry_client

    (tmp_path / "ca.pem").write_bytes(Path(certifi.where()).read_bytes())  # a real CA bundle
    plain = Settings().registry.client_config()
    assert set(plain) == {"url", "timeout"}
    s = Settings(
        schema_registry_url="https://registry.example:8081",
        schema_registry_basic_auth="reg-user:" + PASSWORD,  # type: ignore[arg-type]
        schema_registry_ssl_cafile=tmp_path / "ca.pem",
    )
    conf = s.registry.client_config()
    assert conf["basic.auth.user.info"] == "reg-user:" + PASSWORD
    assert conf["ssl.ca.location"] == str(tmp_path / "ca.pem")
    assert PASSWORD not in repr(s)
    client = registry_client(s)  # confluent-kafka accepts the configuration
    assert isinstance(client, SchemaRegistryClient)
