"""The ``spillway`` command line: ``send``, ``templates``, ``status`` (and more).

Exit codes, the same for every command, so that scripts can rely on them:

    0  success
    1  the command ran, and what it found is bad (``status``: a stage is down or lags)
    2  usage error: unknown option, missing argument (click's own code)
    3  invalid input: an event, template, data file or setting that cannot work
    4  unavailable: Kafka or the schema registry did not answer or did not acknowledge

Commands are registered in :data:`app.cli.main.COMMANDS` and imported lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from app.settings import Settings

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INVALID = 3
EXIT_UNAVAILABLE = 4

EXIT_CODES_HELP = (
    "Exit codes: 0 ok, 1 bad outcome (e.g. a stage is down), 2 usage error, "
    "3 invalid input, 4 Kafka or registry unavailable."
)


class CliError(click.ClickException):
    """A failure with a message for the user and one of the exit codes above."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment (``SPILLWAY_*``), with CLI overrides applied."""
    from pydantic import ValidationError

    from app.settings import Settings

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        # Name the fields only: pydantic's own message quotes the inputs, secrets included.
        fields = ", ".join(".".join(map(str, e["loc"])) for e in exc.errors())
        raise CliError(f"invalid settings: {fields}", EXIT_INVALID) from None


def kafka_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    """confluent-kafka client settings: bootstrap, SASL/TLS, and quiet client logs.

    librdkafka would print every failed connection attempt to stderr; its log goes
    to the ``spillway.cli.kafka`` logger instead, silent unless configured.
    """
    import logging

    logger = logging.getLogger("spillway.cli.kafka")
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
        logger.propagate = False
    return {
        **settings.kafka.client_config(),
        "client.id": "spillway-cli",
        "logger": logger,
        **extra,
    }
