"""Spillway's error hierarchy.

Every error that a stage can meet while handling one message is a
``SpillwayError``; its ``retriable`` flag says whether trying the same message
again may succeed. Agents catch these per message and route the message to a
retry topic or to ``email.dead``; nothing escapes an agent.

    SpillwayError
    ├── EventError                 (retriable: no)  the event itself is bad
    │   ├── DecodeError            bytes are not Avro in Confluent framing nor a JSON object
    │   ├── SchemaError            decoded, but fields are missing or of the wrong type
    │   ├── ValidationError        fields present but invalid (address, priority, ...)
    │   ├── UnknownTemplateError   no such template, or no such template version
    │   ├── RenderError            template failed: missing variable, sandbox violation
    │   └── UnsendableError        the email cannot be put on the wire (a header value the
    │                              adapter cannot encode): the message's fault, never the
    │                              provider's; dead at once, the breaker is not told
    ├── ProviderError              a provider answered with an error
    │   ├── PermanentProviderError (retriable: no)  rejected: bad recipient, content
    │   ├── ThrottledError         (retriable: yes) 429; carries retry_after seconds
    │   ├── ConflictError          (retriable: yes) 409: the provider already holds a request
    │   │                          with this idempotency key (may have been accepted)
    │   └── TransientProviderError (retriable: yes) 5xx, timeouts, connection errors;
    │                              ``ambiguous``: the request may have been accepted
    └── IntakeError                an HTTP intake request was refused (has an HTTP status)
"""

from __future__ import annotations


class SpillwayError(Exception):
    """Base class. ``retriable`` says whether the same message may succeed later."""

    retriable: bool = False
    #: Short, stable, metric-friendly reason code (bounded cardinality).
    reason: str = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason

    @property
    def message(self) -> str:
        return str(self)


class EventError(SpillwayError):
    """The event itself is bad; retrying it can never help."""

    retriable = False
    reason = "bad_event"


class DecodeError(EventError):
    reason = "undecodable"


class SchemaError(EventError):
    reason = "schema_violation"


class ValidationError(EventError):
    reason = "invalid_field"


class UnknownTemplateError(EventError):
    reason = "unknown_template"


class RenderError(EventError):
    reason = "render_error"


class UnsendableError(EventError):
    """The adapter cannot encode this email (e.g. a header value): no request was sent."""

    reason = "invalid_header"


class ProviderError(SpillwayError):
    """A provider refused or failed a send."""

    reason = "provider_error"

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        status: int | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message, reason=reason)
        self.provider = provider
        self.status = status


class PermanentProviderError(ProviderError):
    """The provider rejected this message for good (bad recipient, rejected content)."""

    retriable = False
    reason = "provider_rejected"


class ThrottledError(ProviderError):
    """The provider asked us to slow down. Not the message's fault."""

    retriable = True
    reason = "provider_throttled"

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        status: int | None = 429,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, provider=provider, status=status)
        self.retry_after = retry_after


class TransientProviderError(ProviderError):
    """Server error, timeout or connection failure: may succeed on another try.

    ``ambiguous``: the request (or SMTP DATA) went out and no answer came back (read
    timeout, connection reset or closed mid-answer): the provider may have accepted
    the email. Only an unambiguous failure (nothing sent: connection refused, connect
    timeout; or an answer that refuses it: 5xx, 4xx SMTP reply) proves it did not.
    """

    retriable = True
    reason = "provider_unavailable"

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        status: int | None = None,
        reason: str | None = None,
        ambiguous: bool = False,
    ) -> None:
        super().__init__(message, provider=provider, status=status, reason=reason)
        self.ambiguous = ambiguous


class ConflictError(ProviderError):
    """409: the provider holds a request with this idempotency key already (still in
    progress, or accepted before): the email may have been accepted. Never a sign of
    an unhealthy provider, never a reason to fail over."""

    retriable = True
    reason = "provider_conflict"


class AmbiguousDelivery(SpillwayError):
    """Outcome ``ambiguous``: the provider may have accepted the email, and it has no
    idempotency key (or the key has expired), so it is not resent blindly. An
    operator checks the provider's log, then replays (``spillway replay``) or drops it."""

    retriable = True
    reason = "ambiguous"


class IntakeError(SpillwayError):
    """An intake request was refused; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, *, status: int, retry_after: float | None = None) -> None:
        super().__init__(message, reason="intake_refused")
        self.status = status
        self.retry_after = retry_after
