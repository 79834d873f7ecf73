"""The observer's tally counts each event once, whatever records it left."""

from typing import cast

from app.models import DeadLetter, SendResult
from harness.observe import Tally


def _sent(event_id: str) -> SendResult:
    return cast(SendResult, event_id)  # the tally only keys on the id


def _dead(event_id: str) -> DeadLetter:
    return cast(DeadLetter, event_id)


def test_an_event_both_sent_and_dead_is_done_once() -> None:
    t = Tally(sent={"a": _sent("a"), "b": _sent("b")}, dead={"b": _dead("b"), "c": _dead("c")})
    assert t.done == 3


def test_dead_letters_without_an_id_each_count() -> None:
    t = Tally(dead_without_id=[_dead(""), _dead("")])
    assert t.done == 2
