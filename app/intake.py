"""HTTP intake: append events to ``email.raw-events`` and answer with their offsets.

Intake does no rendering and no validation beyond "is this a JSON object": the
bytes go to Kafka as they are (a batch's objects are re-serialized one by one).
It never answers 2xx before the broker has acknowledged the write (acks=all),
and answers 503 with Retry-After when the broker cannot acknowledge in time.

    POST /v1/events         one JSON object, or Avro in Confluent framing
                            (Content-Type: application/vnd.confluent.avro;
                            key from the X-Event-Id header)     -> 202
    POST /v1/events/batch   a JSON array of objects, or {"events": [...]} -> 202

A retried request may append the same event twice: the sent-ledger makes that
harmless (one email per event id).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from app.errors import IntakeError
from app.runtime import Runtime
from app.topology import RAW

log = logging.getLogger(__name__)

AVRO_TYPES = ("application/vnd.confluent.avro", "application/octet-stream")


async def read_body(request: Any, limit: int) -> bytes:
    declared = request.content_length
    if declared is not None and declared > limit:
        raise IntakeError(f"body of {declared} bytes exceeds the limit of {limit}", status=413)
    body: bytes = await request.content.read(limit + 1)
    if len(body) > limit:
        raise IntakeError(f"body exceeds the limit of {limit} bytes", status=413)
    if not body:
        raise IntakeError("empty body: send a JSON object", status=400)
    return body


def parse_object(body: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise IntakeError(f"body is not valid UTF-8 JSON: {exc}", status=400) from exc
    if not isinstance(obj, dict):
        raise IntakeError(f"body must be a JSON object, not {type(obj).__name__}", status=400)
    return obj


def parse_batch(body: bytes, max_batch: int) -> list[dict[str, Any]]:
    try:
        obj = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise IntakeError(f"body is not valid UTF-8 JSON: {exc}", status=400) from exc
    events = obj.get("events") if isinstance(obj, dict) else obj
    if not isinstance(events, list):
        raise IntakeError('batch must be a JSON array of objects or {"events": [...]}', status=400)
    if not events:
        raise IntakeError("batch is empty", status=400)
    if len(events) > max_batch:
        raise IntakeError(
            f"batch of {len(events)} events exceeds the limit of {max_batch}", status=413
        )
    for i, event in enumerate(events):
        if not isinstance(event, dict):
            raise IntakeError(
                f"events[{i}] must be a JSON object, not {type(event).__name__}", status=400
            )
    return events


def key_of(obj: dict[str, Any]) -> bytes | None:
    event_id = obj.get("event_id")
    return event_id.encode() if isinstance(event_id, str) and event_id else None


class Intake:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.settings = runtime.settings

    async def append(self, items: list[tuple[bytes | None, bytes]]) -> list[dict[str, Any]]:
        """Send and wait for every ack; IntakeError 503 if the broker cannot ack in time."""
        topic = self.runtime.topology.topics[RAW]
        try:
            await topic.maybe_declare()
            futures = [await topic.send(key=k, value=v) for k, v in items]
            metas = await asyncio.wait_for(
                asyncio.gather(*futures), timeout=self.settings.intake_ack_timeout_s
            )
        except Exception as exc:
            log.warning("intake: broker did not acknowledge: %r", exc)
            raise IntakeError(
                f"the broker did not acknowledge the write ({type(exc).__name__}); retry later",
                status=503,
                retry_after=self.settings.intake_retry_after_s,
            ) from exc
        return [
            {
                "topic": m.topic,
                "partition": m.partition,
                "offset": m.offset,
                "sequence": f"{m.partition}:{m.offset}",
            }
            for m in metas
        ]


def error_response(view: Any, exc: IntakeError) -> Any:
    headers = {"Retry-After": str(int(exc.retry_after))} if exc.retry_after else None
    return view.json({"error": str(exc)}, status=exc.status, headers=headers)


def attach(app: Any, runtime: Runtime) -> None:
    import faust

    intake = Intake(runtime)
    settings = runtime.settings

    @app.page("/v1/events")
    class Events(faust.web.View):
        async def post(self, request: Any) -> Any:
            try:
                body = await read_body(request, settings.intake_max_body_bytes)
                if request.content_type in AVRO_TYPES:
                    if body[:1] != b"\x00":
                        raise IntakeError("Avro body must be in Confluent framing", status=400)
                    header = request.headers.get("X-Event-Id")
                    key = header.encode() if header else None
                else:
                    key = key_of(parse_object(body))
                [result] = await intake.append([(key, body)])
            except IntakeError as exc:
                return error_response(self, exc)
            return self.json(result, status=202)

    @app.page("/v1/events/batch")
    class Batch(faust.web.View):
        async def post(self, request: Any) -> Any:
            try:
                body = await read_body(request, settings.intake_max_body_bytes)
                events = parse_batch(body, settings.intake_max_batch)
                items = [(key_of(e), json.dumps(e, separators=(",", ":")).encode()) for e in events]
                results = await intake.append(items)
            except IntakeError as exc:
                return error_response(self, exc)
            return self.json({"accepted": len(results), "results": results}, status=202)
