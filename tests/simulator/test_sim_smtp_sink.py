"""The SMTP sink: real SMTP via aiosmtplib, ledger via its HTTP API."""

from __future__ import annotations

from email.message import EmailMessage
from email.policy import SMTP
from typing import Any

import aiosmtplib
import httpx
import pytest

from simulator.smtp_sink import _BYTES_HEADERS, RunningSink, _content_types


def message(
    event_id: str | None = "ev-1",
    to: str = "ada@example.com",
    *,
    message_id: str | None = "<m-1@shop.example>",
    html: bool = True,
    subject: str = "Your order",
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Shop <no-reply@shop.example>"
    msg["To"] = to
    msg["Subject"] = subject
    if message_id is not None:
        msg["Message-ID"] = message_id
    if event_id is not None:
        msg["X-Spillway-Event-Id"] = event_id
    msg.set_content("Thanks for your order.")
    if html:
        msg.add_alternative("<p>Thanks for your <b>order</b>.</p>", subtype="html")
    return msg


async def smtp_send(sink: RunningSink, msg: EmailMessage, **kw: Any) -> Any:
    return await aiosmtplib.send(msg, hostname=sink.host, port=sink.smtp_port, **kw)


async def api(sink: RunningSink, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with httpx.AsyncClient(base_url=sink.http_url) as client:
        resp = await client.request(method, path, json=body)
        return resp.status_code, resp.json()


async def test_records_multipart_message(sink: RunningSink) -> None:
    errors, reply = await smtp_send(sink, message(subject="Grüße, Ada"))
    assert errors == {} and reply.startswith("2.0.0")

    status, ledger = await api(sink, "GET", "/ledger")
    assert status == 200 and ledger["total"] == 1
    (entry,) = ledger["entries"]
    assert entry["key"] == entry["event_id"] == "ev-1"
    assert entry["message_id"] == "<m-1@shop.example>"
    assert entry["mail_from"] == "no-reply@shop.example"
    assert entry["rcpt_tos"] == ["ada@example.com"]
    assert entry["subject"] == "Grüße, Ada"  # RFC 2047 decoded
    assert entry["has_text"] is True and entry["has_html"] is True
    assert entry["size"] > 200
    assert entry["count"] == 1
    assert entry["received_at"] == entry["last_received_at"] > 0

    _, stats = await api(sink, "GET", "/stats")
    assert stats["messages"] == 1 and stats["accepted"] == 1 and stats["duplicates"] == 0
    assert stats["by_code"] == {"250": 1}
    assert stats["per_second"][0]["messages"] == 1


async def test_text_only_message(sink: RunningSink) -> None:
    await smtp_send(sink, message(html=False))
    entry = sink.state.ledger[0]
    assert entry.has_text and not entry.has_html


async def test_duplicate_delivery_is_accepted_and_counted(sink: RunningSink) -> None:
    await smtp_send(sink, message("ev-1", message_id="<a@x>"))
    errors, _ = await smtp_send(sink, message("ev-1", message_id="<b@x>"))  # same event
    assert errors == {}
    await smtp_send(sink, message("ev-2"))

    _, dups = await api(sink, "GET", "/ledger/duplicates")
    assert dups["count"] == 1 and dups["duplicates"] == 1
    assert dups["entries"][0]["key"] == "ev-1" and dups["entries"][0]["count"] == 2
    assert dups["entries"][0]["message_id"] == "<a@x>"  # the first delivery's
    _, stats = await api(sink, "GET", "/stats")
    assert stats["messages"] == 3 and stats["accepted"] == 2 and stats["duplicates"] == 1
    _, summary = await api(sink, "GET", "/ledger?fields=summary")
    assert summary == {"total": 2, "matched": 2, "duplicates": 1, "messages": 3}


async def test_message_id_is_the_fallback_key(sink: RunningSink) -> None:
    await smtp_send(sink, message(None, message_id="<same@x>"))
    await smtp_send(sink, message(None, message_id="<same@x>"))
    await smtp_send(sink, message(None, message_id=None))
    await smtp_send(sink, message(None, message_id=None))  # no key: never deduped
    keys = [(e.key, e.count) for e in sink.state.ledger]
    assert keys == [("<same@x>", 2), (None, 1), (None, 1)]


async def test_rejected_recipient_gets_550(sink: RunningSink) -> None:
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as info:
        await smtp_send(sink, message(to="reject-me@example.com"))
    (refused,) = info.value.recipients
    assert refused.code == 550 and refused.message == "5.1.1 mailbox unavailable"
    assert sink.state.ledger == []
    _, stats = await api(sink, "GET", "/stats")
    assert stats["rcpt_rejected"] == 1 and stats["by_code"] == {"550": 1}


async def test_partly_rejected_recipients(sink: RunningSink) -> None:
    errors, _ = await smtp_send(sink, message(), recipients=["ok@example.com", "x@invalid.example"])
    assert errors["x@invalid.example"].code == 550
    assert sink.state.ledger[0].rcpt_tos == ["ok@example.com"]


async def test_transient_error_rate_gives_451(sink: RunningSink) -> None:
    status, config = await api(sink, "PATCH", "/config", {"transient_error_rate": 1.0})
    assert status == 200 and config["transient_error_rate"] == 1.0
    with pytest.raises(aiosmtplib.SMTPDataError) as info:
        await smtp_send(sink, message())
    assert info.value.code == 451 and info.value.message == "4.3.0 try again later"
    assert sink.state.ledger == []
    await api(sink, "PATCH", "/config", {"transient_error_rate": 0})
    await smtp_send(sink, message())
    assert len(sink.state.ledger) == 1


async def test_reject_regex_via_patch(sink: RunningSink) -> None:
    await api(sink, "PATCH", "/config", {"reject_regex": r"@blocked\.test$"})
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
        await smtp_send(sink, message(to="a@blocked.test"))


async def test_large_message_is_accepted(sink: RunningSink) -> None:
    msg = message()
    msg.add_attachment(b"\0" * 3_000_000, maintype="application", subtype="octet-stream")
    errors, _ = await smtp_send(sink, msg, timeout=30)
    assert errors == {}
    entry = sink.state.ledger[0]
    assert entry.size > 4_000_000  # base64
    assert entry.has_text and entry.has_html  # the attachment does not count


async def test_one_connection_many_messages(sink: RunningSink) -> None:
    async with aiosmtplib.SMTP(hostname=sink.host, port=sink.smtp_port) as smtp:
        for i in range(20):
            await smtp.send_message(message(f"ev-{i}", message_id=f"<{i}@x>"))
    assert len(sink.state.ledger) == 20


async def test_http_api_reset_filters_and_errors(sink: RunningSink) -> None:
    assert await api(sink, "GET", "/health") == (200, {"ok": True})
    for i in range(3):
        await smtp_send(sink, message(f"ev-{i}"))
    first = sink.state.ledger[0].received_at
    _, since = await api(sink, "GET", f"/ledger?since={first}")
    assert [e["key"] for e in since["entries"]] == ["ev-1", "ev-2"]
    _, page = await api(sink, "GET", "/ledger?limit=1&offset=2")
    assert [e["key"] for e in page["entries"]] == ["ev-2"]
    _, by_key = await api(sink, "GET", "/ledger?key=ev-1")
    assert by_key["matched"] == 1

    status, body = await api(sink, "PATCH", "/config", {"nope": 1})
    assert status == 400 and body == {"error": "unknown config keys: nope"}
    status, body = await api(sink, "PATCH", "/config", {"transient_error_rate": 3})
    assert status == 400 and "transient_error_rate" in body["error"]
    status, body = await api(sink, "GET", "/ledger?limit=abc")
    assert status == 400
    status, body = await api(sink, "GET", "/nope")
    assert status == 404 and "error" in body

    assert await api(sink, "POST", "/reset") == (200, {"ok": True})
    _, stats = await api(sink, "GET", "/stats")
    assert stats["messages"] == stats["accepted"] == stats["duplicates"] == 0
    _, ledger = await api(sink, "GET", "/ledger")
    assert ledger["entries"] == []


def _types(msg: EmailMessage) -> set[str]:
    raw = msg.as_bytes(policy=SMTP)  # CRLF line ends, as on the wire
    return _content_types(_BYTES_HEADERS.parsebytes(raw, headersonly=True))


def test_content_types_of_message_shapes() -> None:
    plain = EmailMessage()
    plain.set_content("x")
    assert _types(plain) == {"text/plain"}

    html_only = EmailMessage()
    html_only.set_content("<p>x</p>", subtype="html")
    assert _types(html_only) == {"text/html"}

    nested = message()  # multipart/alternative(text, html)
    nested.add_attachment("<p>attached</p>", subtype="csv", filename="a.csv")
    nested.add_attachment(b"%PDF", maintype="application", subtype="pdf", filename="a.pdf")
    assert nested.get_content_type() == "multipart/mixed"
    assert _types(nested) == {"text/plain", "text/html"}

    attached_html = EmailMessage()
    attached_html.set_content("x")
    attached_html.add_attachment("<p>y</p>", subtype="html", filename="y.html")
    assert _types(attached_html) == {"text/plain"}
