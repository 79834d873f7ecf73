"""Per-integration scopes of the HTTP intake: what each API key may send.

Configured as ``SPILLWAY_INTAKE_INTEGRATIONS`` (JSON), next to the secrets in
``SPILLWAY_INTAKE_API_KEYS``::

    {"shop-backend": {"templates": ["order_confirmation", "password_reset"],
                      "from_addresses": ["shop.example", "billing@pay.example"],
                      "max_priority": "critical", "rate_per_s": 50},
     "newsletter":   {"templates": ["newsletter"], "max_priority": "bulk"}}

Every key is optional; an integration that has a secret but no entry here (the form
used before scopes existed) may use any template, any sender and any priority.

- ``templates``: template names it may use (exact). Missing: any.
- ``from_addresses``: senders it may name in ``from_address``: an address
  (``billing@pay.example``, exact, case-insensitive) or a domain (``shop.example`` or
  ``@shop.example``: any address at exactly that domain). Missing: any. An event with
  no ``from_address`` uses the operator's default sender and is always allowed.
- ``max_priority``: the highest priority it may use (critical > normal > bulk); an event
  with no priority is ``normal``. Missing: critical.
- ``rate_per_s``: its own rate (events/s, per intake worker; 0 = unlimited), instead of
  ``intake_rate_limits`` / ``intake_rate_per_s``.

A violation is a 403 whose JSON body names the rule (``"rule": "templates"``). Avro
bodies are appended without decoding, so an integration restricted by ``templates``,
``from_addresses`` or ``max_priority`` may only send JSON (rule ``avro``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.errors import ValidationError

#: Lowest to highest.
PRIORITY_RANK = {"bulk": 0, "normal": 1, "critical": 2}


class Scope(BaseModel):
    """What one integration may send (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    templates: tuple[str, ...] | None = Field(None, min_length=1)
    from_addresses: tuple[str, ...] | None = Field(None, min_length=1)
    max_priority: Literal["critical", "normal", "bulk"] = "critical"
    rate_per_s: float | None = Field(None, ge=0, allow_inf_nan=False)

    @field_validator("from_addresses")
    @classmethod
    def _normalized(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        out = []
        for entry in value:
            text = entry.strip().lower()
            local, _, domain = text.rpartition("@")
            if not domain or "@" in local or " " in text or "." not in domain:
                raise ValueError(f"from_addresses: {entry!r} is neither an address nor a domain")
            out.append(text)
        return tuple(out)

    @property
    def restricts_content(self) -> bool:
        return (
            self.templates is not None
            or self.from_addresses is not None
            or self.max_priority != "critical"
        )


#: No restrictions: an integration configured only with a secret.
OPEN = Scope()


def parse_scopes(raw: dict[str, Any]) -> dict[str, Scope]:
    """``SPILLWAY_INTAKE_INTEGRATIONS`` -> Scope per integration (ValueError if invalid)."""
    return {
        name: value if isinstance(value, Scope) else Scope(**value) for name, value in raw.items()
    }


class ScopeViolation(Exception):
    """An event outside its integration's scope; ``rule`` names the broken rule."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule


def sender_address(from_address: str) -> str:
    """The bare address of a sender (``Name <a@b>`` -> ``a@b``), lower-cased.

    ValidationError if it is not a valid sender (``app.templating.validate_sender``).
    """
    from app.templating import validate_sender

    normalized = validate_sender(from_address)
    if normalized.endswith(">") and "<" in normalized:
        normalized = normalized[normalized.rindex("<") + 1 : -1]
    return normalized.lower()


def check_event(integration: str, scope: Scope, event: dict[str, Any]) -> None:
    """ScopeViolation if ``event`` (a checked raw event) is outside ``scope``."""
    template = event.get("template")
    if scope.templates is not None and template not in scope.templates:
        raise ScopeViolation(
            "templates",
            f"integration {integration!r} may not use template {str(template)[:100]!r} "
            f"(allowed: {', '.join(scope.templates)})",
        )
    priority = event.get("priority", "normal")
    if PRIORITY_RANK.get(priority, 99) > PRIORITY_RANK[scope.max_priority]:
        raise ScopeViolation(
            "max_priority",
            f"integration {integration!r} may not send priority {priority!r} "
            f"(highest allowed: {scope.max_priority})",
        )
    sender = event.get("from_address")
    if scope.from_addresses is not None and sender is not None:
        try:
            address = sender_address(sender)
        except ValidationError:
            raise ScopeViolation(
                "from_addresses",
                f"integration {integration!r}: from_address is not a valid sender",
            ) from None
        domain = address.rpartition("@")[2]
        allowed = scope.from_addresses
        if not (address in allowed or domain in allowed or f"@{domain}" in allowed):
            raise ScopeViolation(
                "from_addresses",
                f"integration {integration!r} may not send from {address[:200]!r} "
                f"(allowed: {', '.join(allowed)})",
            )


def check_avro(integration: str, scope: Scope) -> None:
    """ScopeViolation if ``integration`` may not send Avro (bodies intake cannot read)."""
    if scope.restricts_content:
        raise ScopeViolation(
            "avro",
            f"integration {integration!r} is limited by templates, from_addresses or "
            "max_priority, which intake cannot check in an Avro body: send JSON",
        )
