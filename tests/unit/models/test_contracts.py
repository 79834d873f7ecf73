"""The .avsc files are the contract; each Record must mirror its schema exactly."""

from __future__ import annotations

import json
import types
import typing
from typing import Any

import pytest

from app.models import Attempt
from app.serde import RECORDS, SCHEMAS_DIR

PRIMITIVES: dict[Any, set[str]] = {
    str: {"string", "enum"},
    int: {"int", "long"},
    float: {"double", "float"},
    bool: {"boolean"},
    bytes: {"bytes"},
}


def avro_kind(t: Any) -> str:
    if isinstance(t, dict):
        return t["type"] if t["type"] != "enum" else "enum"
    return t


def matches(py: Any, avro: Any) -> bool:
    origin = typing.get_origin(py)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(py)
        if not isinstance(avro, list) or "null" not in avro or type(None) not in args:
            return False
        (inner,) = [a for a in args if a is not type(None)]
        (branch,) = [b for b in avro if b != "null"]
        return matches(inner, branch)
    if isinstance(avro, list):
        return False
    kind = avro_kind(avro)
    if origin is list:
        (item,) = typing.get_args(py)
        return kind == "array" and matches(item, avro["items"])
    if origin is dict:
        return kind == "map"
    if isinstance(py, type) and issubclass(py, Attempt):
        return kind == "record" and avro["name"] == "Attempt" and record_matches(Attempt, avro)
    return kind in PRIMITIVES.get(py, set())


def record_matches(record: type, schema: dict[str, Any]) -> bool:
    check_record(record, schema)
    return True


def check_record(record: type, schema: dict[str, Any]) -> None:
    hints = typing.get_type_hints(record)
    fields = schema["fields"]
    record_fields = list(record._options.fields)  # type: ignore[attr-defined]
    assert record_fields == [f["name"] for f in fields], f"{record.__name__}: field names/order"
    defaults = record._options.defaults  # type: ignore[attr-defined]
    for f in fields:
        name = f["name"]
        assert matches(hints[name], f["type"]), (
            f"{record.__name__}.{name}: {hints[name]} vs {f['type']}"
        )
        if "default" in f:
            assert name in defaults, f"{record.__name__}.{name} needs default {f['default']!r}"
            assert defaults[name] == f["default"], f"{record.__name__}.{name} default"
        else:
            assert name not in defaults, f"{record.__name__}.{name} has a default the schema lacks"


@pytest.mark.parametrize("stem", sorted(RECORDS))
def test_record_mirrors_schema(stem: str) -> None:
    schema = json.loads((SCHEMAS_DIR / f"{stem}.avsc").read_text())
    check_record(RECORDS[stem], schema)


def test_every_schema_has_a_record() -> None:
    assert {p.stem for p in SCHEMAS_DIR.glob("*.avsc")} == set(RECORDS)


def test_dispatch_request_extends_rendered_email() -> None:
    def fields(stem: str) -> list[dict[str, Any]]:
        raw = json.loads((SCHEMAS_DIR / f"{stem}.avsc").read_text())["fields"]
        return [{k: v for k, v in f.items() if k != "doc"} for f in raw]

    rendered = fields("rendered_email")
    assert fields("dispatch_request")[: len(rendered)] == rendered


def test_contract_check_catches_a_mismatch() -> None:
    schema = json.loads((SCHEMAS_DIR / "send_result.avsc").read_text())
    schema["fields"][0]["type"] = "long"
    with pytest.raises(AssertionError):
        check_record(RECORDS["send_result"], schema)
