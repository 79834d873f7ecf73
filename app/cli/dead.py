"""``spillway dead``: list, inspect, summarise and replay dead letters.

    spillway dead list --reason render_error --since 2h
    spillway dead inspect 2:41                    # <partition>:<offset> in email.dead
    spillway dead inspect order-10482-confirmation  # every dead letter of an event id
    spillway dead summary --window 1h --by reason,template
    spillway dead replay --template order_confirmation@v2 --reason render_error --dry-run
    spillway dead replay --template order_confirmation@v2 --reason render_error

Filters (all commands): --reason, --template (name or name@version), --template-version,
--source, --provider, --stage, --event-id (each repeatable: any of the values), and
--since / --until (``2h`` = two hours ago, epoch ms, or ISO 8601; UTC if no zone).

Every command reads ``email.dead`` from the start up to its end at start (a throwaway
consumer group, nothing committed), so it terminates and changes nothing. ``replay``
sends each matching event once (its newest dead letter) back to the stage that gave
up, marked with a ``spillway-replay: <n>`` header; it is safe to repeat, because the
dispatch stage's sent-ledger skips an event id that was sent already. Settings come
from ``SPILLWAY_*`` (``SPILLWAY_TOPIC_NAMESPACE``, ``SPILLWAY_KAFKA_BOOTSTRAP``, ...).

Also runs on its own: ``python -m app.cli.dead ...``.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import sys
from collections.abc import Callable, Iterable
from typing import Any

import click

from app.cli import EXIT_CODES_HELP, EXIT_INVALID, EXIT_UNAVAILABLE, CliError, load_settings
from app.replay import Backend, ReplayError, ReplayReport, kafka_backend, replay
from app.serde import raw_event_from_json
from app.settings import Settings
from app.stages.common import now_ms
from app.stages.deadletters import (
    DIMENSIONS,
    DeadLetterFilter,
    StoredDeadLetter,
    iso,
    parse_duration,
    parse_time,
    summarize_letters,
    template_label,
)
from app.topology import TOPICS

LIST_HEADERS = ["REF", "DEAD AT", "STAGE", "REASON", "EVENT ID", "TEMPLATE", "SOURCE",
                "PROVIDER", "REPLAYED", "MESSAGE"]  # fmt: skip
INSPECT_FIELDS = ("dead_at", "stage", "reason", "error_class", "retriable", "message",
                  "template", "template_version", "source", "provider", "priority",
                  "replayed", "original", "payload_format", "payload_bytes")  # fmt: skip
REPLAY_HEADERS = ["REF", "EVENT ID", "STAGE", "REASON", "TEMPLATE", "TO", "REPLAY #"]

# --- plumbing ---------------------------------------------------------------------------


def backend_of(ctx: click.Context) -> Backend:
    """The Backend passed as ``obj`` (tests), else the real one from the settings."""
    found = ctx.find_object(Backend)
    if found is not None:
        return found
    cached = ctx.meta.get("spillway.dead.backend")
    if cached is None:
        settings = load_settings()
        assert isinstance(settings, Settings)
        try:
            cached = kafka_backend(settings)
        except Exception as exc:
            raise CliError(
                f"schema registry at {settings.registry.url} unavailable: {exc}",
                EXIT_UNAVAILABLE,
            ) from exc
        ctx.meta["spillway.dead.backend"] = cached
        ctx.call_on_close(cached.close)
    return cached


def read(backend: Backend, flt: DeadLetterFilter) -> list[StoredDeadLetter]:
    try:
        return sorted(backend.letters(flt), key=lambda s: (s.letter.dead_at, s.ref))
    except ReplayError as exc:
        raise CliError(str(exc), EXIT_UNAVAILABLE) from exc
    except Exception as exc:  # KafkaException and friends
        raise CliError(f"cannot read dead letters: {exc}", EXIT_UNAVAILABLE) from exc


def _time(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_time(value, now_ms())
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def filter_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--reason", "reasons", multiple=True, help="Reason code, e.g. render_error."),
        click.option(
            "--template", "templates", multiple=True, help="Template name, or name@version."
        ),
        click.option("--template-version", "template_versions", multiple=True),
        click.option("--source", "sources", multiple=True, help="Source integration."),
        click.option("--provider", "providers", multiple=True),
        click.option(
            "--stage", "stages", multiple=True, type=click.Choice(["render", "route", "dispatch"])
        ),
        click.option("--event-id", "event_ids", multiple=True),
        click.option("--since", callback=_time, help="Dead at or after: 2h, epoch ms, ISO 8601."),
        click.option("--until", callback=_time, help="Dead before: 30m, epoch ms, ISO 8601."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def make_filter(kw: dict[str, Any]) -> DeadLetterFilter:
    sets = {
        k: frozenset(kw.pop(k, ()))
        for k in (
            "reasons",
            "templates",
            "template_versions",
            "sources",
            "providers",
            "stages",
            "event_ids",
        )
    }
    return DeadLetterFilter(**sets, since_ms=kw.pop("since", None), until_ms=kw.pop("until", None))


def table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])


def short(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def brief(s: StoredDeadLetter) -> dict[str, Any]:
    dl = s.letter
    return {
        "ref": s.ref,
        "dead_at": iso(dl.dead_at),
        "event_id": dl.event_id,
        "stage": dl.stage,
        "reason": dl.reason,
        "error_class": dl.error_class,
        "message": dl.message,
        "retriable": dl.retriable,
        "template": dl.template,
        "template_version": dl.template_version,
        "source": dl.source,
        "provider": dl.provider,
        "priority": dl.priority,
        "attempts": len(dl.history),
        "replayed": dl.replayed,
        "original": f"{dl.original_topic}/{dl.original_partition}/{dl.original_offset}",
    }


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


# --- commands ---------------------------------------------------------------------------


@click.group(
    name="dead",
    epilog=EXIT_CODES_HELP,
    context_settings={"help_option_names": ["-h", "--help"]},
)
def dead() -> None:
    """List, inspect, summarise and replay dead letters (email.dead)."""


@dead.command("list", epilog=EXIT_CODES_HELP)
@filter_options
@click.option("--limit", default=50, show_default=True, help="Show the newest N (0: all).")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@click.pass_context
def list_cmd(ctx: click.Context, limit: int, as_json: bool, **kw: Any) -> None:
    """Dead letters that match the filters, oldest first."""
    letters = read(backend_of(ctx), make_filter(kw))
    shown = letters[-limit:] if limit > 0 else letters
    if as_json:
        emit_json([brief(s) for s in shown])
        return
    rows = [
        [
            s.ref,
            iso(s.letter.dead_at),
            s.letter.stage,
            s.letter.reason,
            s.letter.event_id or "-",
            template_label(s.letter),
            s.letter.source or "-",
            s.letter.provider or "-",
            str(s.letter.replayed or ""),
            short(s.letter.message, 60),
        ]
        for s in shown
    ]
    if rows:
        click.echo(table(rows, LIST_HEADERS))
    more = f" (showing the newest {len(shown)})" if len(shown) < len(letters) else ""
    click.echo(f"{len(letters)} dead letter(s){more}")


@dead.command("inspect", epilog=EXIT_CODES_HELP)
@click.argument("refs", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="JSON (payload base64 and decoded).")
@click.pass_context
def inspect_cmd(ctx: click.Context, refs: tuple[str, ...], as_json: bool) -> None:
    """Everything about dead letters, by REF (<partition>:<offset>) or event id."""
    backend = backend_of(ctx)
    wanted = set(refs)
    everything = read(backend, DeadLetterFilter())
    found = [s for s in everything if s.ref in wanted or s.letter.event_id in wanted]
    if not found:
        raise CliError(f"no dead letter with ref or event id {', '.join(refs)}", EXIT_INVALID)
    out = []
    for s in found:
        doc = brief(s)
        dl = s.letter
        doc["history"] = [a.asdict() for a in dl.history]
        doc["payload_format"] = dl.payload_format
        doc["payload_bytes"] = len(dl.payload)
        doc["payload"] = decoded_payload(backend, s)
        if as_json:
            doc["payload_base64"] = base64.b64encode(dl.payload).decode()
        out.append(doc)
    if as_json:
        emit_json(out)
        return
    for i, doc in enumerate(out):
        if i:
            click.echo("")
        click.echo(render_inspection(doc))


def decoded_payload(backend: Backend, s: StoredDeadLetter) -> Any:
    """The payload as a JSON-able value, or a readable note when it does not decode."""
    dl = s.letter
    try:
        if dl.payload_format == "json" or dl.payload.lstrip()[:1] == b"{":
            try:
                return json.loads(dl.payload)
            except ValueError:
                return raw_event_from_json(dl.payload).asdict()
        schema = schema_of_topic(backend, dl.original_topic)
        if schema is not None and dl.payload[:1] == b"\x00":
            record = backend.decode(dl.payload, schema)
            return json.loads(json.dumps(record.asdict(), default=jsonable))
    except Exception as exc:
        return f"<does not decode: {exc}> {dl.payload[:120]!r}"
    return f"<{len(dl.payload)} bytes> {dl.payload[:120]!r}"


def jsonable(value: Any) -> Any:
    if hasattr(value, "asdict"):
        return value.asdict()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def schema_of_topic(backend: Backend, topic: str) -> str | None:
    for logical, (_, schema) in TOPICS.items():
        if backend.topic(logical) == topic:
            return schema
    return None


def render_inspection(doc: dict[str, Any]) -> str:
    lines = [f"dead letter {doc['ref']}  (event {doc['event_id'] or '-'})"]
    for key in INSPECT_FIELDS:
        lines.append(f"  {key:<17}{doc[key] if doc[key] is not None else '-'}")
    if doc["history"]:
        lines.append("  attempts:")
        for n, a in enumerate(doc["history"], 1):
            where = f"{a['stage']}" + (f" via {a['provider']}" if a.get("provider") else "")
            lines.append(
                f"    {n}. {iso(a['at'])} {where}: {a['reason']} ({a['error_class']}"
                f"{', retriable' if a['retriable'] else ''}) {a['message']}"
            )
    payload = doc["payload"]
    text = payload if isinstance(payload, str) else json.dumps(payload, indent=2, default=str)
    lines.append("  payload:")
    lines += [f"    {line}" for line in text.splitlines()]
    return "\n".join(lines)


@dead.command("summary", epilog=EXIT_CODES_HELP)
@filter_options
@click.option("--window", default="1h", show_default=True, help="Sliding window: 15m, 1h, 1d.")
@click.option(
    "--by",
    default=",".join(DIMENSIONS),
    show_default=True,
    help="Dimensions, comma separated: " + ", ".join(DIMENSIONS) + ".",
)
@click.option("--top", default=10, show_default=True, help="Rows per dimension (0: all).")
@click.option(
    "--analyser",
    metavar="URL",
    help="Ask a running analyser worker (e.g. http://127.0.0.1:6070) instead of reading the "
    "topic; filters do not apply.",
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def summary_cmd(
    ctx: click.Context,
    window: str,
    by: str,
    top: int,
    analyser: str | None,
    as_json: bool,
    **kw: Any,
) -> None:
    """Counts by reason, template@version, source, provider and stage over a window,
    next to the window of the same size just before (what started failing?)."""
    try:
        window_s = parse_duration(window)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--window") from None
    dims = [d.strip() for d in by.split(",") if d.strip()]
    unknown = [d for d in dims if d not in DIMENSIONS]
    if unknown:
        raise click.BadParameter(f"unknown dimension(s) {unknown}", param_hint="--by")
    if analyser:
        doc = ask_analyser(analyser, window)
    else:
        flt = make_filter(kw)
        now = now_ms()
        since = now - int(2 * window_s * 1000)  # this window and the one before
        if flt.since_ms is None or flt.since_ms < since:
            flt = dataclasses.replace(flt, since_ms=since)
        letters = [s.letter for s in read(backend_of(ctx), flt)]
        doc = summarize_letters(letters, now_ms=now, window_s=window_s).as_json(dims, top or None)
    if as_json:
        emit_json(doc)
        return
    click.echo(
        f"dead letters {doc['start']} .. {doc['end']} ({doc['window']}): {doc['total']}"
        f" ({doc['rate_per_min']}/min); the {doc['window']} before: {doc['previous_total']}"
    )
    for d in dims:
        counts = list(doc["by"].get(d, {}).items())[: top or None]
        rows = [[value, str(c["count"]), str(c["previous"]), trend(c)] for value, c in counts]
        if rows:
            click.echo("")
            click.echo(table(rows, [d.upper(), "COUNT", "BEFORE", ""]))
    if "alert" in doc:
        click.echo("")
        click.echo(f"alert: {'FIRING' if doc['alert']['firing'] else 'ok'}")


def trend(c: dict[str, int]) -> str:
    if c["count"] and not c["previous"]:
        return "new"
    if c["previous"] and c["count"] >= 2 * c["previous"]:
        return "rising"
    return ""


def ask_analyser(url: str, window: str) -> Any:
    import httpx

    try:
        response = httpx.get(
            url.rstrip("/") + "/dead-letters/summary", params={"window": window}, timeout=10
        )
    except httpx.HTTPError as exc:
        raise CliError(f"analyser at {url} unavailable: {exc}", EXIT_UNAVAILABLE) from exc
    if response.status_code != 200:
        raise CliError(f"analyser said {response.status_code}: {response.text}", EXIT_INVALID)
    return response.json()


@dead.command("replay", epilog=EXIT_CODES_HELP)
@filter_options
@click.option("--dry-run", is_flag=True, help="Show what would be replayed; produce nothing.")
@click.option("--all", "everything", is_flag=True, help="Replay every dead letter (no filter).")
@click.option("--limit", type=int, help="Replay at most N (oldest first).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def replay_cmd(
    ctx: click.Context,
    dry_run: bool,
    everything: bool,
    limit: int | None,
    as_json: bool,
    **kw: Any,
) -> None:
    """Send matching dead letters back to the stage that gave up.

    render dead letters go back to email.raw-events (they re-render with the current
    templates); route ones to email.rendered; dispatch ones to their priority's lane
    with the attempt count reset. One record per event id; safe to repeat.
    """
    flt = make_filter(kw)
    if flt.is_empty() and not everything:
        raise click.UsageError("give at least one filter, or --all to replay every dead letter")
    backend = backend_of(ctx)
    try:
        report = replay(backend, flt, dry_run=dry_run, limit=limit)
    except ReplayError as exc:
        raise CliError(str(exc), EXIT_UNAVAILABLE) from exc
    except Exception as exc:
        raise CliError(f"replay failed: {exc}", EXIT_UNAVAILABLE) from exc
    if as_json:
        emit_json(report_json(backend, report))
        return
    click.echo(render_report(backend, report))


def report_json(backend: Backend, report: ReplayReport) -> dict[str, Any]:
    return {
        "dry_run": report.dry_run,
        "produced": report.produced,
        "superseded": report.superseded,
        "by_topic": {backend.topic(t): n for t, n in report.by_topic().items()},
        "items": [
            {
                "ref": i.source.ref,
                "event_id": i.source.letter.event_id,
                "stage": i.source.letter.stage,
                "reason": i.source.letter.reason,
                "topic": backend.topic(i.topic),
                "replay": i.replay_number,
            }
            for i in report.items
        ],
        "skipped": [{"ref": s.source.ref, "why": s.why} for s in report.skipped],
    }


def render_report(backend: Backend, report: ReplayReport) -> str:
    verb = "would replay" if report.dry_run else "replayed"
    lines: list[str] = []
    if report.dry_run and report.items:
        rows = [
            [
                i.source.ref,
                i.source.letter.event_id or "-",
                i.source.letter.stage,
                i.source.letter.reason,
                template_label(i.source.letter),
                backend.topic(i.topic),
                str(i.replay_number),
            ]
            for i in report.items
        ]
        lines.append(table(rows, REPLAY_HEADERS))
    targets = ", ".join(f"{backend.topic(t)} {n}" for t, n in sorted(report.by_topic().items()))
    lines.append(f"{verb} {len(report.items)} dead letter(s)" + (f": {targets}" if targets else ""))
    if report.superseded:
        lines.append(f"{report.superseded} older dead letter(s) of the same events not replayed")
    for s in report.skipped:
        lines.append(f"skipped {s.source.ref} ({s.source.letter.event_id or '-'}): {s.why}")
    return "\n".join(lines)


def main(argv: Iterable[str] | None = None) -> int:
    """``python -m app.cli.dead``: the same commands without the ``spillway`` group."""
    try:
        dead.main(args=list(argv) if argv is not None else None, prog_name="spillway dead")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
