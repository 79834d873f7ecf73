"""The intake's API contract, fuzzed: schemathesis against a running intake.

The intake runs in this process (app.intake.IntakeService on aiohttp, 127.0.0.1 on an
ephemeral port, in a thread of its own) and appends through a real aiokafka producer
(acks=all) to this test's own topic on the shared broker. Schemathesis generates
requests from the OpenAPI document the intake serves at /openapi.json: valid ones
(positive: every 2xx is a real append acknowledged by Kafka) and invalid ones
(negative: must be refused with a 4xx). Every answer is checked against the document
(status codes, content type, headers, response schema) and no answer may be a 5xx.
Deterministic (hypothesis derandomized), about 30-60 s.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from aiohttp import web
from aiokafka import AIOKafkaProducer
from confluent_kafka.admin import AdminClient, NewTopic
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig

from app.intake import IntakeService, ProducerSink, web_app
from app.intake_openapi import document
from app.settings import Settings

pytestmark = pytest.mark.integration

KEY = "contract-key-0123456789abcdef"
#: Examples per operation and generation mode (2 POST operations x 2 modes = 520 cases
#: at most; hypothesis stops early only when it runs out of distinct inputs).
EXAMPLES = 130
MIN_CASES = 500
CONFIG = SchemathesisConfig.from_dict(
    {
        "auth": {"openapi": {"bearer": {"bearer": KEY}, "apiKey": {"api_key": KEY}}},
        # an invalid request must be refused with a 4xx that says so; 413 included (a
        # batch over intake_max_batch), 5xx never
        "checks": {
            "negative_data_rejection": {
                "expected-statuses": [400, 401, 403, 404, 405, 406, 408, 413, 415, 422, 429]
            }
        },
    }
)


class RunningIntake:
    """The intake handlers on a real socket, producing to the real broker."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.url = ""

    def start(self) -> RunningIntake:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(60)
        return self

    async def _start(self) -> None:
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka.bootstrap,
            acks="all",
            linger_ms=1,
            max_request_size=1_000_000,
        )
        await self.producer.start()
        sink = ProducerSink(self.producer, self.settings.topic("email.raw-events"), 1_000_000)
        self.runner = web.AppRunner(web_app(IntakeService(self.settings, sink)))
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def _stop(self) -> None:
        await self.runner.cleanup()
        await self.producer.stop()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def intake(stack: None) -> Iterator[RunningIntake]:
    ns = f"t{uuid.uuid4().hex[:8]}"
    s = Settings(
        topic_namespace=f"{ns}.",
        app_id_prefix=ns,
        intake_auth="required",
        intake_api_keys={"contract": KEY},
        intake_rate_per_s=0,  # unlimited: the fuzzer must not be throttled into 429s only
        intake_max_batch=50,
    )
    admin = AdminClient({"bootstrap.servers": s.kafka.bootstrap})
    topic = s.topic("email.raw-events")
    for future in admin.create_topics([NewTopic(topic, 3, 1)]).values():
        future.result(30)
    running = RunningIntake(s).start()
    try:
        yield running
    finally:
        running.stop()


def test_the_served_document_is_the_contract(intake: RunningIntake) -> None:
    r = httpx.get(f"{intake.url}/openapi.json", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    assert r.json() == document(intake.settings)


def fuzz(
    strategy: Any, label: str, url: str, statuses: Counter[tuple[str, str, int]]
) -> Any:
    """A hypothesis test calling the intake with each generated case and checking the
    answer against the document (schemathesis' default checks)."""
    auth = {"Authorization": f"Bearer {KEY}"}

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        response = case.call(base_url=url, headers=auth, timeout=30)
        statuses[(label, case.media_type or "-", response.status_code)] += 1
        case.validate_response(response, headers=auth)

    return run


def test_schemathesis_finds_no_5xx_and_no_contract_violation(intake: RunningIntake) -> None:
    schema = schemathesis.openapi.from_dict(document(intake.settings), config=CONFIG)
    statuses: Counter[tuple[str, str, int]] = Counter()
    failures: list[str] = []
    started = time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # Err: an invalid document
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if operation.method.upper() == "GET" and mode is GenerationMode.NEGATIVE:
                continue  # no input to get wrong
            label = f"{operation.label} {mode.value}"
            run = fuzz(operation.as_strategy(generation_mode=mode), label, intake.url, statuses)
            try:
                run()
            except (Exception, BaseExceptionGroup) as exc:  # the (shrunk) failures
                failures.append(f"{label}: {type(exc).__name__}: {str(exc)[:1500]}")
    elapsed = time.monotonic() - started
    total = sum(statuses.values())
    summary = "\n".join(f"{n:5d}  {k}" for k, n in sorted(statuses.items()))
    print(f"schemathesis: {total} cases in {elapsed:.1f} s\n{summary}")
    assert not failures, "\n".join(dict.fromkeys(failures))
    assert total >= MIN_CASES, summary
    assert not [k for k in statuses if k[2] >= 500], summary
    # the fuzzer reached the broker: real appends were acknowledged
    assert sum(n for k, n in statuses.items() if k[2] == 202) >= 100, summary
