"""What an agent does when something other than the message fails.

Stage logic turns every per-message failure into a result or a dead letter, so an
exception that reaches an agent is an infrastructure fault (broker, table, bug in
the glue). Letting it escape would make Faust ack the message and lose it, so the
worker exits at once instead: nothing past the last commit is acked, and after a
restart (by the process supervisor) the message is handled again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

EXIT_CODE = 70  # EX_SOFTWARE


@contextmanager
def crash_on_error(agent: str) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        log.critical(
            "%s: stopping the worker without acking the message: %r", agent, exc, exc_info=exc
        )
        logging.shutdown()
        os._exit(EXIT_CODE)
