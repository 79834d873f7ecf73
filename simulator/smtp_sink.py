"""A real SMTP server (aiosmtpd) that records every message it accepts.

Run::

    python -m simulator.smtp_sink --host 127.0.0.1 --port 2525 --http-port 8031
        [--config sink.json] [--transient-error-rate P] [--reject-regex RE] [--seed N]
        [--set key=<json>]

SMTP and the HTTP control API share one asyncio loop (no threads, no locks). No AUTH,
no TLS; SMTPUTF8 and 8BITMIME are offered; messages up to ``data_size_limit`` bytes.

Behaviour per message:

- ``RCPT TO`` an address matching the reject rule -> ``550 5.1.1 mailbox unavailable``.
- ``DATA``: after ``latency_ms``, with probability ``transient_error_rate`` ->
  ``451 4.3.0 try again later`` (nothing recorded); else ``250`` and a ledger record.
- The ledger key is the ``X-Spillway-Event-Id`` header, else ``Message-ID``, else none.
  A second delivery with a known key is accepted too (as a real MTA would) but adds
  no entry: it bumps that entry's ``count`` and the global ``duplicates`` counter.

Config keys (JSON, also ``PATCH /config``): ``reject_local_prefixes`` (default
["reject"]), ``reject_domains`` (default ["invalid.example"]), ``reject_regex`` (null),
``transient_error_rate`` (0), ``latency_ms`` (0), ``seed`` (null),
``data_size_limit`` (10 MiB; applies to new connections).

HTTP API: ``GET /health``, ``GET|PATCH /config``, ``POST /reset``,
``GET /stats[?series=0][&seconds=N]``,
``GET /ledger[?since=T][&key=K][&limit=N][&offset=N][&fields=summary]``,
``GET /ledger/duplicates``.

Shapes::

    stats:  {"started_at", "now", "messages" (DATA received), "accepted" (= ledger
             entries), "duplicates", "rcpt_rejected", "ledger_size",
             "by_code": {"250": n, "451": n, "550": n},
             "per_second": [{"second", "messages", "accepted", "by_code"}]}
    ledger: {"total", "matched", "offset", "count", "entries": [{"key", "event_id",
             "message_id", "mail_from", "rcpt_tos", "subject", "has_text", "has_html",
             "size", "received_at", "last_received_at", "count"}]}
             (fields=summary: {"total", "matched", "duplicates", "messages"})
    duplicates: {"count", "duplicates", "entries": [...]}
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import re
import sys
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesParser, Parser
from email.policy import compat32

from aiohttp import web
from aiosmtpd.smtp import SMTP, Envelope, Session

from simulator.common import (
    JSON,
    Clock,
    ConfigBase,
    ConfigError,
    LedgerQuery,
    QueryError,
    RejectRule,
    StatsBook,
    control_error_middleware,
    error_response,
    json_response,
    ledger_response,
    load_json_file,
    nonneg_float,
    opt_int,
    opt_regex,
    parse_assignments,
    parse_stats_query,
    pos_int,
    probability,
    read_json_object,
    setup_logging,
    start_site,
    str_tuple,
    wait_for_signal,
)

log = logging.getLogger("simulator.smtp_sink")

EVENT_ID_HEADER = "X-Spillway-Event-Id"
REJECT_REPLY = "550 5.1.1 mailbox unavailable"
TRANSIENT_REPLY = "451 4.3.0 try again later"


@dataclass(frozen=True, slots=True)
class SinkConfig(ConfigBase):
    reject_local_prefixes: tuple[str, ...] = ("reject",)
    reject_domains: tuple[str, ...] = ("invalid.example",)
    reject_regex: str | None = None
    transient_error_rate: float = 0.0
    latency_ms: float = 0.0
    seed: int | None = None
    data_size_limit: int = 10 * 1024 * 1024


# One converter per field; set after the class body: a ClassVar annotation inside a
# dataclass is misread when this module runs as __main__ under a wrapper (cProfile).
SinkConfig.CONVERTERS = {
    "reject_local_prefixes": str_tuple,
    "reject_domains": str_tuple,
    "reject_regex": opt_regex,
    "transient_error_rate": probability,
    "latency_ms": nonneg_float,
    "seed": opt_int,
    "data_size_limit": pos_int,
}


class SinkEntry:
    """One distinct message (by key) the sink accepted."""

    __slots__ = (
        "count",
        "event_id",
        "has_html",
        "has_text",
        "key",
        "last_received_at",
        "mail_from",
        "message_id",
        "rcpt_tos",
        "received_at",
        "size",
        "subject",
    )

    def __init__(
        self,
        key: str | None,
        event_id: str | None,
        message_id: str | None,
        mail_from: str,
        rcpt_tos: list[str],
        subject: str | None,
        has_text: bool,
        has_html: bool,
        size: int,
        received_at: float,
    ) -> None:
        self.key = key
        self.event_id = event_id
        self.message_id = message_id
        self.mail_from = mail_from
        self.rcpt_tos = rcpt_tos
        self.subject = subject
        self.has_text = has_text
        self.has_html = has_html
        self.size = size
        self.received_at = received_at
        self.last_received_at = received_at
        self.count = 1

    def to_json(self) -> JSON:
        return {name: getattr(self, name) for name in _ENTRY_FIELDS}


_ENTRY_FIELDS = (
    "key",
    "event_id",
    "message_id",
    "mail_from",
    "rcpt_tos",
    "subject",
    "has_text",
    "has_html",
    "size",
    "received_at",
    "last_received_at",
    "count",
)

_FOLD = re.compile(r"\r?\n(?=[ \t])")
_BYTES_HEADERS = BytesParser(policy=compat32)
_HEADERS = Parser(policy=compat32)


def _header(msg: Message, name: str) -> str | None:
    """A header's value, unfolded and RFC 2047-decoded."""
    raw = msg.get(name)
    if raw is None:
        return None
    text = _FOLD.sub("", str(raw)).strip()
    try:
        return str(make_header(decode_header(text)))
    except (ValueError, LookupError, UnicodeError):
        return text


def _content_types(msg: Message, depth: int = 0) -> set[str]:
    """Content types of the leaf parts of a headers-only parsed message, no attachments.

    Splits multipart bodies on their boundary and parses each part's headers only:
    the stdlib full parser compiles a regex per boundary, which dominated the sink's CPU.
    """
    if msg.get_content_disposition() == "attachment":
        return set()
    ctype = msg.get_content_type()
    body = msg.get_payload()
    if not ctype.startswith("multipart/"):
        return {ctype}
    boundary = msg.get_boundary()
    if not boundary or not isinstance(body, str) or depth > 8:
        return set()
    found: set[str] = set()
    for chunk in ("\n" + body).split("\n--" + boundary)[1:]:  # [0] is the preamble
        if chunk.startswith("--"):  # the close delimiter
            break
        _, _, part = chunk.partition("\n")  # drop the rest of the delimiter line
        found |= _content_types(_HEADERS.parsestr(part, headersonly=True), depth + 1)
    return found


class SinkState:
    def __init__(self, config: SinkConfig, clock: Clock = time.time) -> None:
        self.clock = clock
        self.stats = StatsBook(clock, names=("messages", "accepted", "by_code"))
        self.ledger: list[SinkEntry] = []
        self.by_key: dict[str, SinkEntry] = {}
        self.rcpt_rejected = 0
        self.config = config
        self.rng = random.Random(config.seed)
        self.rejects = self._rule()

    def _rule(self) -> Callable[[str], bool]:
        cfg = self.config
        return RejectRule(cfg.reject_local_prefixes, cfg.reject_domains, cfg.reject_regex).compile()

    def set_config(self, config: SinkConfig) -> None:
        if config.seed != self.config.seed:
            self.rng = random.Random(config.seed)
        self.config = config
        self.rejects = self._rule()

    def reset(self) -> None:
        self.ledger = []
        self.by_key = {}
        self.rcpt_rejected = 0
        self.stats.reset()
        self.rng = random.Random(self.config.seed)

    def record(self, envelope: Envelope, received_at: float) -> bool:
        """Parse and record an accepted message; True if its key was new."""
        raw = envelope.original_content or b""
        if isinstance(envelope.content, bytes) and not raw:
            raw = envelope.content
        msg = _BYTES_HEADERS.parsebytes(raw, headersonly=True)
        event_id = _header(msg, EVENT_ID_HEADER)
        message_id = _header(msg, "Message-ID")
        key = event_id or message_id or None
        if key is not None and (entry := self.by_key.get(key)) is not None:
            entry.count += 1
            entry.last_received_at = received_at
            self.stats.duplicates += 1
            return False
        types = _content_types(msg)
        entry = SinkEntry(
            key,
            event_id,
            message_id,
            envelope.mail_from or "",
            list(envelope.rcpt_tos),
            _header(msg, "Subject"),
            "text/plain" in types,
            "text/html" in types,
            len(raw),
            received_at,
        )
        self.ledger.append(entry)
        if key is not None:
            self.by_key[key] = entry
        return True

    def stats_json(self, series: bool = True, last_seconds: int | None = None) -> JSON:
        out = self.stats.totals_json()
        out["duplicates"] = self.stats.duplicates
        out["rcpt_rejected"] = self.rcpt_rejected
        out["ledger_size"] = len(self.ledger)
        if series:
            out["per_second"] = self.stats.series_json(last_seconds)
        return out


class SinkHandler:
    """aiosmtpd handler: reject rule at RCPT, injection and recording at DATA."""

    def __init__(self, state: SinkState) -> None:
        self.state = state

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        state = self.state
        if state.rejects(address):
            state.rcpt_rejected += 1
            state.stats.count(state.clock(), 550)
            return REJECT_REPLY
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        state = self.state
        now = state.clock()
        bucket = state.stats.arrive(now)
        if state.config.latency_ms:
            await asyncio.sleep(state.config.latency_ms / 1000)
        rate = state.config.transient_error_rate
        if rate and state.rng.random() < rate:
            state.stats.finish(bucket, 451)
            return TRANSIENT_REPLY
        new = state.record(envelope, now)
        state.stats.finish(bucket, 250, accepted=new)
        return "250 2.0.0 Message accepted for delivery"


# --- HTTP API -------------------------------------------------------------------------

STATE_KEY = web.AppKey("sink_state", SinkState)


async def health(request: web.Request) -> web.Response:
    return json_response({"ok": True})


async def get_config(request: web.Request) -> web.Response:
    return json_response(request.app[STATE_KEY].config.to_json())


async def patch_config(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        changes = await read_json_object(request)
        state.set_config(state.config.updated(changes))
    except (ConfigError, QueryError) as exc:
        return error_response(str(exc))
    log.info("config changed: %s", ", ".join(sorted(changes)))
    return json_response(state.config.to_json())


async def post_reset(request: web.Request) -> web.Response:
    request.app[STATE_KEY].reset()
    return json_response({"ok": True})


async def get_stats(request: web.Request) -> web.Response:
    try:
        series, seconds = parse_stats_query(request.query)
    except QueryError as exc:
        return error_response(str(exc))
    return json_response(request.app[STATE_KEY].stats_json(series, seconds))


async def get_ledger(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    try:
        query = LedgerQuery.parse(request.query)
    except QueryError as exc:
        return error_response(str(exc))
    matched = query.select(state.ledger)
    out: JSON = {"total": len(state.ledger), "matched": len(matched)}
    if query.summary:
        out["duplicates"] = sum(1 for e in matched if e.count > 1)
        out["messages"] = sum(e.count for e in matched)
        return json_response(out)
    page = query.page(matched)
    out.update(offset=query.offset, count=len(page))
    return await ledger_response(request, out, page)


async def get_duplicates(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    dups = [e.to_json() for e in state.ledger if e.count > 1]
    return json_response(
        {"count": len(dups), "duplicates": state.stats.duplicates, "entries": dups}
    )


def create_http_app(state: SinkState) -> web.Application:
    app = web.Application(middlewares=[control_error_middleware()])
    app[STATE_KEY] = state
    app.router.add_get("/health", health)
    app.router.add_get("/config", get_config)
    app.router.add_patch("/config", patch_config)
    app.router.add_post("/reset", post_reset)
    app.router.add_get("/stats", get_stats)
    app.router.add_get("/ledger", get_ledger)
    app.router.add_get("/ledger/duplicates", get_duplicates)
    return app


# --- running --------------------------------------------------------------------------


class RunningSink:
    """An SMTP server and its HTTP API running in the current loop."""

    def __init__(
        self,
        state: SinkState,
        smtp_server: asyncio.Server,
        runner: web.AppRunner,
        connections: weakref.WeakSet[SMTP],
        host: str,
        smtp_port: int,
        http_port: int,
    ) -> None:
        self.state = state
        self.host = host
        self.smtp_port = smtp_port
        self.http_port = http_port
        self._smtp_server = smtp_server
        self._runner = runner
        self._connections = connections

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    async def close(self) -> None:
        self._smtp_server.close()
        for proto in list(self._connections):  # end open SMTP sessions too
            if proto.transport is not None:
                proto.transport.close()
        await self._smtp_server.wait_closed()
        await self._runner.cleanup()


async def start_sink(
    config: SinkConfig | None = None,
    *,
    host: str = "127.0.0.1",
    smtp_port: int = 2525,
    http_port: int = 8031,
    clock: Clock = time.time,
    hostname: str = "spillway-sink.local",
) -> RunningSink:
    """Start both servers in the running loop; port 0 picks a free port."""
    state = SinkState(config or SinkConfig(), clock)
    handler = SinkHandler(state)
    loop = asyncio.get_running_loop()
    connections: weakref.WeakSet[SMTP] = weakref.WeakSet()

    def factory() -> SMTP:
        proto = SMTP(
            handler,
            data_size_limit=state.config.data_size_limit,
            enable_SMTPUTF8=True,
            hostname=hostname,  # given, so no slow getfqdn() per connection
            ident="Spillway SMTP sink",
            loop=loop,
        )
        connections.add(proto)
        return proto

    smtp_server = await loop.create_server(factory, host, smtp_port)
    bound_smtp = int(smtp_server.sockets[0].getsockname()[1])
    runner, bound_http = await start_site(create_http_app(state), host, http_port)
    return RunningSink(state, smtp_server, runner, connections, host, bound_smtp, bound_http)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m simulator.smtp_sink", description=__doc__)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=2525, help="SMTP port")
    p.add_argument("--http-port", type=int, default=8031, help="control API port")
    p.add_argument("--config", help="JSON file of config keys")
    p.add_argument("--transient-error-rate", type=float)
    p.add_argument("--latency-ms", type=float)
    p.add_argument("--reject-regex")
    p.add_argument("--seed", type=int)
    p.add_argument("--set", action="append", metavar="KEY=JSON", help="any config key")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> SinkConfig:
    data = load_json_file(args.config)
    flags = {
        "transient_error_rate": args.transient_error_rate,
        "latency_ms": args.latency_ms,
        "reject_regex": args.reject_regex,
        "seed": args.seed,
    }
    data.update({k: v for k, v in flags.items() if v is not None})
    data.update(parse_assignments(args.set))
    return SinkConfig.from_mapping(data)


async def serve(config: SinkConfig, host: str, smtp_port: int, http_port: int) -> None:
    sink = await start_sink(config, host=host, smtp_port=smtp_port, http_port=http_port)
    log.info(
        "SMTP sink listening on smtp://%s:%d, API on %s; config changes: %s",
        host,
        sink.smtp_port,
        sink.http_url,
        config.non_defaults() or "none",
    )
    try:
        await wait_for_signal()
    finally:
        await sink.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_level)
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every session
    try:
        config = config_from_args(args)
    except (ConfigError, OSError, ValueError) as exc:
        print(f"simulator.smtp_sink: {exc}", file=sys.stderr)
        return 2
    asyncio.run(serve(config, args.host, args.port, args.http_port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
