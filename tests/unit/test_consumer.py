"""GaplessConsumer: a jump in a stream partition's offsets is rewound, not acked."""

from __future__ import annotations

from app.consumer import GaplessConsumer, GaplessTransport, skipped_from
from app.factory import create_app
from app.settings import Settings


def test_skipped_from_finds_the_first_skipped_offset() -> None:
    assert skipped_from(None, 7) is None  # nothing known yet
    assert skipped_from(42, 42) is None  # the one expected
    assert skipped_from(42, 30) is None  # seen before: a duplicate, delivered again
    assert skipped_from(42, 57) == 42  # 42..56 fetched but never delivered


def test_the_app_uses_the_gapless_consumer() -> None:
    app = create_app(Settings(stage="dispatch", store="memory://"))  # type: ignore[arg-type]
    assert isinstance(app.transport, GaplessTransport)
    assert app.transport.Consumer is GaplessConsumer
