"""What an agent does when something other than the message fails.

Stage logic turns every per-message failure into a result or a dead letter, so an
exception that reaches an agent is an infrastructure fault (broker unreachable,
registry unreachable past its wait, table store, or a bug in the glue). Letting it
escape would make Faust ack the message and lose it, so the worker exits at once
instead: nothing past the last commit is acked, and after a restart (by the process
supervisor) the message is handled again.

A known infrastructure fault is logged as one line that says what failed; anything
else (a bug) is logged with its traceback.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from app.agents.delivery import ProduceFailedError
from app.serde import RegistryUnavailableError

log = logging.getLogger(__name__)

EXIT_CODE = 70  # EX_SOFTWARE
#: Faults that are known not to be a bug: one log line, no traceback.
KNOWN_FAULTS: tuple[type[BaseException], ...] = (RegistryUnavailableError, ProduceFailedError)


@contextmanager
def crash_on_error(agent: str) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        known = isinstance(exc, KNOWN_FAULTS)
        log.critical(
            "%s: infrastructure fault, stopping the worker without acking the message "
            "(it is handled again after a restart): %s: %s",
            agent,
            type(exc).__name__,
            exc,
            exc_info=None if known else exc,
        )
        logging.shutdown()
        os._exit(EXIT_CODE)
