"""``spillway send``: produce test events to ``email.raw-events``.

Events are produced the way any producer would (key = event id, acks=all), as
JSON or as Avro in Confluent framing, and each one's partition and offset is
printed once the broker has acknowledged it.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from app.cli import (
    EXIT_CODES_HELP,
    EXIT_INVALID,
    EXIT_UNAVAILABLE,
    CliError,
    kafka_config,
    load_settings,
)
from app.settings import Settings
from app.topology import RAW, TOPICS

RAW_TOPIC = TOPICS[RAW][0]  # email.raw-events
#: At most this many events are listed one per line; more get a summary.
LIST_LIMIT = 20


@dataclass
class Delivery:
    event_id: str
    topic: str
    partition: int | None = None
    offset: int | None = None
    error: str | None = None

    def asdict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v is not None}


def read_json_arg(value: str, what: str) -> Any:
    """``value`` is JSON text, ``@path`` (a file) or ``-`` (stdin)."""
    try:
        if value == "-":
            text = sys.stdin.read()
        elif value.startswith("@"):
            text = Path(value[1:]).read_text(encoding="utf-8")
        else:
            text = value
    except OSError as exc:
        raise CliError(f"{what}: cannot read {value[1:]}: {exc.strerror}", EXIT_INVALID) from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise CliError(f"{what} is not valid JSON: {exc}", EXIT_INVALID) from None


def events_from_file(path: str) -> list[dict[str, Any]]:
    """A JSON object, a JSON array of objects, or JSON Lines; ``-`` is stdin."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}", EXIT_INVALID) from None
    try:
        loaded = json.loads(text)
        events = loaded if isinstance(loaded, list) else [loaded]
    except ValueError:
        try:  # JSON Lines
            events = [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError as exc:
            raise CliError(f"{path}: not JSON, nor JSON Lines: {exc}", EXIT_INVALID) from None
    for i, event in enumerate(events):
        if not isinstance(event, dict):
            raise CliError(f"{path}: event {i} is not a JSON object", EXIT_INVALID)
    if not events:
        raise CliError(f"{path}: no events", EXIT_INVALID)
    return events


def check_event(event: dict[str, Any], settings: Settings, templates: Any) -> None:
    """Refuse (exit 3) an event that the render stage would dead-letter."""
    from app.errors import SpillwayError
    from app.serde import raw_event_from_json
    from app.stages.common import Origin
    from app.stages.render import RenderStage

    try:
        raw = raw_event_from_json(json.dumps(event).encode())
        stage = RenderStage(
            serde=None,  # type: ignore[arg-type]  # render() does not decode
            templates=templates,
            default_sender=settings.default_sender,
        )
        stage.render(raw, Origin(topic="cli", partition=0, offset=0))
    except SpillwayError as exc:
        ident = event.get("event_id", "?")
        raise CliError(
            f"event {ident}: {exc.reason}: {exc} (use --no-check to send it anyway)",
            EXIT_INVALID,
        ) from None


def numbered(events: list[dict[str, Any]], count: int) -> Iterator[dict[str, Any]]:
    """Each event ``count`` times; copies get ``-1``..``-count`` after their id."""
    for event in events:
        if count == 1:
            yield event
        else:
            for i in range(1, count + 1):
                yield {**event, "event_id": f"{event['event_id']}-{i}"}


class Encoder:
    """Event dict -> value bytes, as JSON or as Avro in Confluent framing."""

    def __init__(self, fmt: str, settings: Settings, topic: str) -> None:
        self.fmt = fmt
        self.topic = topic
        self.serde: Any = None
        if fmt == "avro":
            from app.runtime import registry_client
            from app.serde import Serde

            self.serde = Serde(registry_client(settings), {topic: "raw_event"})
            try:
                self.serde.register()
            except Exception as exc:
                raise CliError(
                    f"schema registry at {settings.registry.url}: {exc}", EXIT_UNAVAILABLE
                ) from None

    def __call__(self, event: dict[str, Any]) -> bytes:
        data = json.dumps(event, ensure_ascii=False).encode()
        if self.serde is None:
            return data
        from app.errors import SpillwayError
        from app.serde import raw_event_from_json

        try:
            return bytes(self.serde.encode(self.topic, raw_event_from_json(data)))
        except SpillwayError as exc:
            raise CliError(f"event {event.get('event_id')}: {exc}", EXIT_INVALID) from None


def produce(
    settings: Settings,
    topic: str,
    events: list[dict[str, Any]],
    encode: Encoder,
    timeout_s: float,
    progress: bool,
) -> list[Delivery]:
    """Produce every event and wait for the acks; one Delivery per event, in order."""
    from confluent_kafka import KafkaException, Producer

    conf = kafka_config(
        settings,
        **{
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "message.timeout.ms": int(timeout_s * 1000),
        },
    )
    try:
        producer = Producer(conf)
    except KafkaException as exc:
        raise CliError(f"Kafka client: {exc}", EXIT_INVALID) from None
    results = [Delivery(str(e.get("event_id", "")), topic) for e in events]

    def callback(result: Delivery) -> Any:
        def done(err: Any, msg: Any) -> None:
            if err is not None:
                result.error = str(err)
            else:
                result.partition, result.offset = msg.partition(), msg.offset()

        return done

    with click.progressbar(
        length=len(events), label="producing", file=sys.stderr, hidden=not progress
    ) as bar:
        for event, result in zip(events, results, strict=True):
            key = result.event_id.encode() or None
            value = encode(event)
            while True:
                try:
                    producer.produce(topic, key=key, value=value, on_delivery=callback(result))
                    break
                except BufferError:  # local queue full: let deliveries drain
                    producer.poll(0.1)
            producer.poll(0)
            bar.update(1)
    remaining = producer.flush(timeout_s + 5)
    for result in results:
        if result.partition is None and result.error is None:
            result.error = f"not acknowledged within {timeout_s:g} s ({remaining} pending)"
    return results


@click.command(
    epilog=EXIT_CODES_HELP,
    short_help="Produce test events and print their partition and offset.",
)
@click.option("-t", "--template", help="Template name, e.g. password_reset.")
@click.option("--to", "to", metavar="ADDRESS", help="Recipient address.")
@click.option(
    "-p",
    "--priority",
    type=click.Choice(["critical", "normal", "bulk"]),
    default="normal",
    show_default=True,
    help="Dispatch lane.",
)
@click.option(
    "-d",
    "--data",
    metavar="JSON|@FILE|-",
    help="Template variables as a JSON object (inline, @file, or - for stdin). "
    "Default: the template's sample data.",
)
@click.option("--event-id", help="Idempotency key, also the Kafka key. Default: cli-<random>.")
@click.option("--source", default="cli", show_default=True, help="Producing integration.")
@click.option("--locale", help="Locale, e.g. de-AT.")
@click.option("--template-version", help="Pin a template version (default: latest).")
@click.option("--from", "from_address", metavar="SENDER", help="From address.")
@click.option(
    "-f",
    "--file",
    "file",
    metavar="PATH",
    help="Send the events in PATH instead (a JSON object, an array of them, or JSON Lines; "
    "- for stdin). Event flags are ignored.",
)
@click.option(
    "-n",
    "--count",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Send each event N times, with event ids <id>-1 .. <id>-N.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["json", "avro"]),
    default="json",
    show_default=True,
    help="Wire form: a JSON object, or Avro in Confluent framing (registers the schema).",
)
@click.option(
    "--check/--no-check",
    default=True,
    show_default=True,
    help="Refuse events that the render stage would dead-letter (unknown template, "
    "missing variable, bad address). --no-check sends them anyway, e.g. to test dead letters.",
)
@click.option("--topic", help="Topic to produce to. Default: email.raw-events (namespaced).")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    help="Seconds to wait for the broker's acknowledgements.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per event.")
def send(
    template: str | None,
    to: str | None,
    priority: str,
    data: str | None,
    event_id: str | None,
    source: str,
    locale: str | None,
    template_version: str | None,
    from_address: str | None,
    file: str | None,
    count: int,
    fmt: str,
    check: bool,
    topic: str | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Produce test events to email.raw-events and print where they landed.

    \b
    Examples:
      spillway send -t password_reset --to ann@example.com -p critical
      spillway send -t order_confirmation --to ann@example.com -d @order.json --locale de
      spillway send -f events.jsonl --format avro
      spillway send -t newsletter --to list@example.com -n 500      # with a progress bar

    Kafka and the registry are found through SPILLWAY_KAFKA_BOOTSTRAP,
    SPILLWAY_SCHEMA_REGISTRY_URL and the SPILLWAY_KAFKA_SECURITY_* settings.
    """
    settings = load_settings()
    topic = topic or settings.topic(RAW_TOPIC)
    templates = None
    if file is not None:
        events = events_from_file(file)
    else:
        if not template or not to:
            raise click.UsageError("give --template and --to, or --file")
        templates = _templates(settings)
        if data is not None:
            variables = read_json_arg(data, "--data")
            if not isinstance(variables, dict):
                raise CliError("--data must be a JSON object", EXIT_INVALID)
        else:
            variables = _sample_data(templates, template)
        event: dict[str, Any] = {
            "event_id": event_id or f"cli-{uuid.uuid4().hex[:12]}",
            "template": template,
            "to": to,
            "priority": priority,
            "source": source,
            "data": variables,
            "locale": locale,
            "template_version": template_version,
            "from_address": from_address,
        }
        events = [{k: v for k, v in event.items() if v is not None}]
    all_events = list(numbered(events, count))
    if check:
        templates = templates or _templates(settings)
        for e in events:  # copies differ only in their id
            check_event(e, settings, templates)

    encode = Encoder(fmt, settings, topic)
    progress = len(all_events) > 1 and not as_json
    results = produce(settings, topic, all_events, encode, timeout, progress)
    failed = [r for r in results if r.error]
    if as_json:
        for r in results:
            click.echo(json.dumps(r.asdict()))
    else:
        _report(results, fmt)
    if failed:
        raise CliError(
            f"{len(failed)} of {len(results)} events were not acknowledged by Kafka at "
            f"{settings.kafka.bootstrap}: {failed[0].error}",
            EXIT_UNAVAILABLE,
        )


def _templates(settings: Settings) -> Any:
    from app.templating import TemplateConfigError, TemplateStore

    try:
        return TemplateStore(settings.templates_dir)
    except TemplateConfigError as exc:
        raise CliError(f"templates: {exc}", EXIT_INVALID) from None


def _sample_data(templates: Any, name: str) -> dict[str, Any]:
    from app.errors import UnknownTemplateError

    try:
        return dict(templates.sample_data(name))
    except UnknownTemplateError as exc:
        raise CliError(str(exc), EXIT_INVALID) from None


def _report(results: list[Delivery], fmt: str) -> None:
    ok = [r for r in results if not r.error]
    for r in results[:LIST_LIMIT]:
        if r.error:
            click.secho(f"FAILED {r.event_id}: {r.error}", fg="red", err=True)
        else:
            click.echo(f"{r.event_id} -> {r.topic} partition {r.partition} offset {r.offset}")
    if len(results) > LIST_LIMIT:
        click.echo(f"... and {len(results) - LIST_LIMIT} more")
    if len(results) > 1:
        partitions = sorted({r.partition for r in ok if r.partition is not None})
        click.echo(
            f"sent {len(ok)} of {len(results)} events ({fmt}) to "
            f"{results[0].topic}, partitions {partitions}"
        )
