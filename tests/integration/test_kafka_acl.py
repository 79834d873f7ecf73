"""SASL/SCRAM and ACLs on a real broker (issue 15 point 3): a producer with
credentials for email.raw-events can produce there and is refused on email.dead and
email.sent; a wrong password is refused; the producer cannot read dead letters.

Runs its OWN KRaft broker (tests/integration/scram_broker.py) on free ports; the
shared broker of the local stack is not used. The clients are configured by
Settings (kafka.client_config() for librdkafka, kafka.credentials() for the workers'
aiokafka), as the CLI and the workers configure theirs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)

from tests.plugins.scram import ScramBroker

pytestmark = pytest.mark.integration

RAW, DEAD, SENT = "email.raw-events", "email.dead", "email.sent"
USERS = {"admin": "admin-secret-1", "shop-intake": "intake-secret-2"}


def allow(principal: str, topic: str, operation: AclOperation) -> AclBinding:
    return AclBinding(
        ResourceType.TOPIC, topic, ResourcePatternType.LITERAL,
        f"User:{principal}", "*", operation, AclPermissionType.ALLOW,
    )  # fmt: skip


@pytest.fixture(scope="module")
def broker() -> Iterator[ScramBroker]:
    with ScramBroker(USERS) as b:
        admin = AdminClient(b.client_config("admin"))
        for f in admin.create_topics([NewTopic(t, 1, 1) for t in (RAW, DEAD, SENT)]).values():
            f.result(30)
        # The intake's principal may write (and describe, for metadata) its one topic.
        acls = [allow("shop-intake", RAW, AclOperation.WRITE),
                allow("shop-intake", RAW, AclOperation.DESCRIBE)]  # fmt: skip
        for f in admin.create_acls(acls).values():
            f.result(30)
        # The authorizer sees them once the metadata log has them: wait, with a deadline.
        deadline = time.monotonic() + 20
        while len(all_acls(admin)) < len(acls):
            assert time.monotonic() < deadline, "the ACLs never showed up"
            time.sleep(0.2)
        yield b


def produce(conf: dict[str, Any], topic: str) -> KafkaError | None:
    """Produce one record and wait for its delivery report; the error, if any."""
    reports: list[KafkaError | None] = []
    producer = Producer({**conf, "acks": "all", "message.timeout.ms": 15000,
                         "enable.idempotence": True})  # fmt: skip
    producer.produce(topic, key=b"k", value=b"v", on_delivery=lambda e, m: reports.append(e))
    deadline = time.monotonic() + 30
    while not reports and time.monotonic() < deadline:
        producer.poll(0.2)
    producer.flush(5)
    assert reports, f"no delivery report for {topic}"
    return reports[0]


def all_acls(admin: AdminClient) -> list[AclBinding]:
    every = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,  # type: ignore[arg-type]
                             AclOperation.ANY, AclPermissionType.ANY)  # fmt: skip
    found: list[AclBinding] = admin.describe_acls(every).result(30)
    return found


def test_acls_are_in_place(broker: ScramBroker) -> None:
    found = all_acls(AdminClient(broker.client_config("admin")))
    assert {(a.name, a.principal, a.operation) for a in found} == {
        (RAW, "User:shop-intake", AclOperation.WRITE),
        (RAW, "User:shop-intake", AclOperation.DESCRIBE),
    }


def end_offsets(broker: ScramBroker) -> dict[str, int]:
    """Each topic's end offset, read as the admin (the module's tests share the broker, in
    any order, so a test compares before and after)."""
    from confluent_kafka import TopicPartition

    admin_consumer = Consumer({**broker.client_config("admin"), "group.id": "check"})
    try:
        return {
            t: admin_consumer.get_watermark_offsets(TopicPartition(t, 0), timeout=10)[1]
            for t in (RAW, DEAD, SENT)
        }
    finally:
        admin_consumer.close()


def test_producer_writes_its_topic_and_is_refused_elsewhere(broker: ScramBroker) -> None:
    conf = broker.client_config("shop-intake")
    assert conf["security.protocol"] == "SASL_PLAINTEXT"
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512"
    before = end_offsets(broker)
    assert produce(conf, RAW) is None
    for topic in (DEAD, SENT):
        err = produce(conf, topic)
        assert err is not None, f"{topic}: the producer was allowed to write"
        assert err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, (topic, err)
    # what was written is there, once; nothing reached the refused topics
    after = end_offsets(broker)
    assert {t: after[t] - before[t] for t in after} == {RAW: 1, DEAD: 0, SENT: 0}


def test_the_admin_may_write_anywhere(broker: ScramBroker) -> None:
    assert produce(broker.client_config("admin"), SENT) is None


def test_wrong_password_is_refused(broker: ScramBroker) -> None:
    # librdkafka reports the refusal at once through error_cb; list_topics itself only
    # fails when its timeout runs out, so ask in short rounds until the refusal came.
    errors: list[KafkaError] = []
    config: Any = {  # the stubs type the values as str | int | float, not callbacks
        **broker.client_config("shop-intake", password="not-the-password"),
        "error_cb": errors.append,
    }
    admin = AdminClient(config)

    def refused() -> bool:
        return any(
            "uthentication" in e.str() or e.code() == KafkaError._AUTHENTICATION for e in errors
        )

    deadline = time.monotonic() + 10
    while not refused() and time.monotonic() < deadline:
        with pytest.raises(KafkaException):  # never a metadata answer
            admin.list_topics(timeout=1)
        admin.poll(0)  # serves error_cb
    assert refused(), [e.str() for e in errors]


def test_the_producer_cannot_read_dead_letters(broker: ScramBroker) -> None:
    consumer = Consumer({**broker.client_config("shop-intake"), "group.id": "snoop",
                         "auto.offset.reset": "earliest"})  # fmt: skip
    try:
        consumer.subscribe([DEAD])
        deadline = time.monotonic() + 20
        error = None
        while error is None and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None:
                assert msg.error() is not None, "the producer read a dead letter"
                error = msg.error()
        assert error is not None, "no refusal within 20 s"
        assert error.code() in (
            KafkaError.TOPIC_AUTHORIZATION_FAILED,
            KafkaError.GROUP_AUTHORIZATION_FAILED,
        ), error
    finally:
        consumer.close()


def test_the_workers_aiokafka_client_authenticates_with_scram(broker: ScramBroker) -> None:
    """The workers' path: Settings.kafka.credentials -> Faust -> aiokafka."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import TopicAuthorizationFailedError
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    settings = broker.settings("shop-intake")
    auth = credentials_to_aiokafka_auth(settings.kafka.credentials())

    async def run() -> tuple[int, str]:
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all",
                                    request_timeout_ms=15000, **auth)  # fmt: skip
        await producer.start()
        try:
            meta = await asyncio.wait_for(producer.send_and_wait(RAW, b"aio", key=b"k"), 30)
            try:
                await asyncio.wait_for(producer.send_and_wait(DEAD, b"no", key=b"k"), 30)
                refused = "not refused"
            except TopicAuthorizationFailedError as exc:
                refused = type(exc).__name__
            return meta.offset, refused
        finally:
            await producer.stop()

    offset, refused = asyncio.run(run())
    assert offset >= 0
    assert refused == "TopicAuthorizationFailedError"
