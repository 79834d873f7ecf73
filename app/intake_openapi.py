"""The intake's API contract: an OpenAPI 3.0 document built from the settings.

Served at ``GET /openapi.json`` by the intake; ``tests/integration/test_intake_contract.py``
runs schemathesis with it against a running intake. The event schema mirrors
``schemas/raw_event.avsc`` and ``app.intake_body.event_problems``: what the document
calls valid, intake accepts; what it calls invalid, intake refuses with 400.
"""

from __future__ import annotations

from typing import Any

from app.intake_body import Refused
from app.models import PRIORITIES
from app.serde import LONG_MAX, LONG_MIN

#: Every ``reason`` an intake error body can carry.
REASONS = (
    "body_too_large",
    "record_too_large",
    "batch_too_large",
    "body_incomplete",
    "body_timeout",
    "empty_body",
    "malformed_json",
    "too_deep",
    "too_many_values",
    "invalid_event",
    "invalid_avro",
    "unauthorized",
    "scope_violation",
    "rate_limited",
    "broker_unavailable",
    "not_found",
    "method_not_allowed",
    "internal_error",
)


def _nullable_string(doc: str) -> dict[str, Any]:
    return {"type": "string", "nullable": True, "description": doc}


RAW_EVENT: dict[str, Any] = {
    "type": "object",
    "description": "One email to send (schemas/raw_event.avsc as JSON). Unknown fields are "
    "kept and ignored downstream. With authentication on, `source` is replaced by the "
    "integration's name.",
    "required": ["event_id", "template", "to"],
    "properties": {
        "event_id": {
            "type": "string",
            "minLength": 1,
            "description": "Idempotency key; also the Kafka key.",
        },
        "template": {"type": "string", "minLength": 1, "description": "Template name."},
        "to": {"type": "string", "minLength": 1, "description": "Recipient address."},
        "priority": {"type": "string", "enum": list(PRIORITIES), "default": "normal"},
        "data": {
            "type": "object",
            "nullable": True,
            "additionalProperties": True,
            "description": "Template variables (any JSON values, nested at most "
            "intake_max_json_depth levels with the event).",
        },
        "data_json": _nullable_string("Template variables as a JSON object in a string."),
        "source": _nullable_string("The producing integration (set by intake when "
                                   "authenticated)."),
        "template_version": _nullable_string("Pin a template version."),
        "locale": _nullable_string("BCP 47 locale."),
        "from_address": _nullable_string("Sender (`addr` or `Name <addr>`); null: the "
                                         "default sender."),
        "created_at": {
            "type": "integer",
            "nullable": True,
            "minimum": LONG_MIN,
            "maximum": LONG_MAX,
            "description": "Epoch milliseconds.",
        },
    },
    "additionalProperties": True,
}

ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["error", "reason"],
    "properties": {
        "error": {"type": "string", "description": "What was wrong, for a human."},
        "reason": {"type": "string", "enum": list(REASONS)},
        "rule": {
            "type": "string",
            "description": "403 only: the scope rule broken (templates, from_addresses, "
            "max_priority, avro).",
        },
    },
}

APPENDED: dict[str, Any] = {
    "type": "object",
    "required": ["topic", "partition", "offset", "sequence"],
    "properties": {
        "topic": {"type": "string"},
        "partition": {"type": "integer", "minimum": 0},
        "offset": {"type": "integer", "minimum": 0},
        "sequence": {"type": "string", "description": "<partition>:<offset>"},
    },
}

_RETRY_AFTER = {
    "Retry-After": {
        "required": True,
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}


def _error(description: str, retry_after: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if retry_after:
        response["headers"] = _RETRY_AFTER
    return response


def _errors(max_body: int, max_batch: int) -> dict[str, Any]:
    return {
        "400": _error("Malformed body: not JSON, not an event, too deep, too many values, "
                      "broken framing."),
        "401": _error("Missing or wrong credentials (WWW-Authenticate: Bearer)."),
        "403": _error("The event is outside the integration's scope; `rule` names the rule."),
        "408": _error("The body did not arrive in time."),
        "413": _error(f"Body over {max_body} bytes, an event too large for one Kafka "
                      f"record, or more than {max_batch} events."),
        "429": _error("The integration is over its rate.", retry_after=True),
        "503": _error("The broker did not acknowledge in time: retry the same request.",
                      retry_after=True),
    }


def document(settings: Any) -> dict[str, Any]:
    """The OpenAPI document for an intake configured by ``settings``."""
    max_body, max_batch = settings.intake.max_body_bytes, settings.intake.max_batch
    auth = settings.intake.auth == "required"
    events_array = {
        "type": "array",
        "minItems": 1,
        "maxItems": max_batch,
        "items": {"$ref": "#/components/schemas/RawEvent"},
    }
    doc: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {
            "title": "Spillway intake",
            "version": "1",
            "description": "Append email events to email.raw-events. A 202 comes only after "
            "the broker acknowledged (acks=all). Authentication: an API key (Bearer or "
            "X-Api-Key) or an HMAC signature (X-Spillway-Integration, X-Spillway-Timestamp, "
            "X-Spillway-Signature: sha256=HMAC(secret, '<timestamp>.' + body)). See "
            "docs/intake.md.",
        },
        "paths": {
            "/v1/events": {
                "post": {
                    "operationId": "appendEvent",
                    "summary": "Append one event (JSON, or Avro in Confluent framing).",
                    "parameters": [
                        {
                            "name": "X-Event-Id",
                            "in": "header",
                            "required": False,
                            "description": "Kafka key of an Avro body.",
                            "schema": {"type": "string"},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/RawEvent"}
                            },
                            "application/vnd.confluent.avro": {
                                "schema": {
                                    "type": "string",
                                    "format": "binary",
                                    "description": "Magic byte 0, 4-byte schema id, Avro.",
                                }
                            },
                        },
                    },
                    "responses": {
                        "202": {
                            "description": "Appended and acknowledged.",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/Appended"}
                                }
                            },
                        },
                        **_errors(max_body, max_batch),
                    },
                }
            },
            "/v1/events/batch": {
                "post": {
                    "operationId": "appendBatch",
                    "summary": "Append events, all or nothing.",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "oneOf": [
                                        events_array,
                                        {
                                            "type": "object",
                                            "required": ["events"],
                                            "properties": {"events": events_array},
                                        },
                                    ]
                                }
                            }
                        },
                    },
                    "responses": {
                        "202": {
                            "description": "Every event appended and acknowledged.",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["accepted", "results"],
                                        "properties": {
                                            "accepted": {"type": "integer", "minimum": 1},
                                            "results": {
                                                "type": "array",
                                                "items": {
                                                    "$ref": "#/components/schemas/Appended"
                                                },
                                            },
                                        },
                                    }
                                }
                            },
                        },
                        **_errors(max_body, max_batch),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document.",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "The OpenAPI document.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
        "components": {
            "schemas": {"RawEvent": RAW_EVENT, "Error": ERROR, "Appended": APPENDED},
        },
    }
    if auth:
        doc["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
        }
        doc["security"] = [{"bearer": []}, {"apiKey": []}]
    return doc


def reason_of(exc: Exception) -> str:
    """The ``reason`` of an intake refusal (``Refused.code``, else by status)."""
    if isinstance(exc, Refused):
        return exc.code
    status = getattr(exc, "status", 500)
    return {
        401: "unauthorized",
        403: "scope_violation",
        413: "body_too_large",
        429: "rate_limited",
        503: "broker_unavailable",
    }.get(status, "invalid_event" if 400 <= status < 500 else "internal_error")
