"""Records that mirror the Avro contracts in ``schemas/`` field by field.

``tests/unit/models/test_contracts.py`` checks each Record against its ``.avsc``:
same field names, order, types and defaults. Change both together.
"""

from app.models.dead_letter import Attempt, DeadLetter
from app.models.dispatch_request import DispatchRequest
from app.models.raw_event import RawEvent
from app.models.rendered_email import RenderedEmail
from app.models.send_result import SendResult

PRIORITIES = ("critical", "normal", "bulk")

__all__ = [
    "PRIORITIES",
    "Attempt",
    "DeadLetter",
    "DispatchRequest",
    "RawEvent",
    "RenderedEmail",
    "SendResult",
]
