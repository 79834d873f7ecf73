"""Generate ``docs/configuration.md`` from the Settings object, so the reference cannot drift.

    python -m app.docs            print the reference
    python -m app.docs --write    rewrite docs/configuration.md
    python -m app.docs --check    exit 1 if docs/configuration.md is out of date

(``scripts/gen-config-docs`` runs ``--write``; a unit test runs the check.) The
top-level fields are grouped by the ``# --- name ---`` comments in ``app/settings.py``;
each section object (``settings.kafka``, ...) gets its own table with each field's
variable and attribute; everything else (types, defaults, descriptions) comes from
the pydantic fields themselves.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from app.settings import PROJECT_ROOT, Settings

TARGET = PROJECT_ROOT / "docs" / "configuration.md"
_SECTION = re.compile(r"^\s*# --- (?P<title>.+?) -*\s*$")
_FIELD = re.compile(r"^    (?P<name>[a-z_][a-z0-9_]*)\s*:")

HEADER = """\
# Configuration reference

<!-- Generated from app/settings.py by scripts/gen-config-docs. Do not edit by hand:
     change the field descriptions in app/settings.py and rerun the script. -->

Every Spillway process (stage workers, the CLI) reads one settings object,
[`app/settings.py`](../app/settings.py): a few process-wide fields plus one section
each for `kafka`, `registry`, `intake`, `providers`, `policy` and `observability`.
Each field is an environment variable `SPILLWAY_<NAME>` (upper case), named by its
flat name (the section's prefix plus the field, as before the sections); in code it is
`settings.<section>.<field>`. The flat names keep working as variables and as
`Settings(<name>=...)` keywords; the flat attribute `settings.<name>` still works too but
is deprecated (a `DeprecationWarning` names the sectioned attribute). Defaults match the
local stack started by `scripts/stack up`, so nothing needs setting for local development.

- Booleans: `true` / `false`. Lists and maps: JSON, e.g.
  `SPILLWAY_INTAKE_API_KEYS='{"shop-backend": "<secret>"}'`.
- **secret** fields are never printed: not in logs, dead letters, metrics or `repr()`.
  Their defaults are local-stack values; set real ones in production.
- An unknown `SPILLWAY_*` variable is ignored, so check the spelling against this page.
"""


def sections(model: type[BaseModel]) -> dict[str, str]:
    """Field name -> the title of the ``# --- title ---`` comment above it."""
    found: dict[str, str] = {}
    current = "general"
    for line in inspect.getsource(model).splitlines():
        if m := _SECTION.match(line):
            current = m["title"]
        elif (m := _FIELD.match(line)) and m["name"] in model.model_fields:
            found[m["name"]] = current
    return found


def type_name(annotation: Any) -> str:
    """A short, reader-oriented rendering of a field type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:  # constraints are in the description
        return type_name(args[0])
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        inner = [type_name(a) for a in args if a is not type(None)]
        suffix = " or none" if type(None) in args else ""
        return " or ".join(inner) + suffix
    if origin in (list, tuple):
        return f"JSON list of {type_name(args[0])}" if args else "JSON list"
    if origin is dict:
        return f"JSON object of {type_name(args[1])}" if args else "JSON object"
    if annotation is SecretStr:
        return "string, **secret**"
    if isinstance(annotation, type):
        return {
            "str": "string",
            "int": "integer",
            "float": "number",
            "bool": "boolean",
            "Path": "path",
        }.get(annotation.__name__, annotation.__name__)
    return str(annotation)


def default_of(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "*required*"
    else:
        value = field.default
    if value is None:
        return "none"
    if isinstance(value, SecretStr):
        return "*(local-stack value)*"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, Path):
        try:
            return f"`{value.relative_to(PROJECT_ROOT)}` (in the repo)"
        except ValueError:
            return f"`{value}`"
    if isinstance(value, dict | list):
        return (
            f"`{value!r}`".replace("'", '"')
            if value
            else ("`{}`" if isinstance(value, dict) else "`[]`")
        )
    return f"`{value}`" if value != "" else '`""` (empty)'


def nested_models(annotation: Any) -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = []
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        found.append(annotation)
    for arg in typing.get_args(annotation):
        found += [m for m in nested_models(arg) if m not in found]
    return found


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def table(
    model: type[BaseModel], names: list[str], env: bool, section: str | None = None
) -> list[str]:
    """One row per field: its variable (``env``) or key; in a section, also its
    attribute (``settings.<section>.<field>``)."""
    if section is not None:
        head = "| variable | attribute | type | default | description |"
    elif env:
        head = "| variable | type | default | description |"
    else:
        head = "| key | type | default | description |"
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    flat_name = getattr(model, "flat_name", None)
    for name in names:
        field = model.model_fields[name]
        variable = flat_name(name) if flat_name is not None else name
        label = f"`SPILLWAY_{variable.upper()}`" if env else f"`{name}`"
        where = f" `{section}.{name}` |" if section is not None else ""
        lines.append(
            f"| {label} |{where} {type_name(field.annotation)} | {default_of(field)} | "
            f"{_cell(field.description or '')} |"
        )
    return lines


def section_models(model: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """Fields of ``model`` that are sections (a model with a ``flat_name``)."""
    found: dict[str, type[BaseModel]] = {}
    for name, field in model.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel) and hasattr(sub, "flat_name"):
            found[name] = sub
    return found


def _anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9 -]", "", title.lower()).strip().replace(" ", "-")


def generate(model: type[BaseModel] = Settings) -> str:
    parts = section_models(model)
    by_section: dict[str, list[str]] = {}
    for name, section in sections(model).items():
        if name not in parts:
            by_section.setdefault(section, []).append(name)
    missing = [n for n in model.model_fields if n not in sections(model) and n not in parts]
    if missing:
        by_section.setdefault("other", []).extend(missing)
    out = [HEADER, "## Sections", ""]
    out += [f"- [{title}](#{_anchor(title)}) ({len(names)})" for title, names in by_section.items()]
    out += [
        f"- [{name}](#{_anchor(name)}) ({len(sub.model_fields)}): `settings.{name}`"
        for name, sub in parts.items()
    ]
    nested: list[tuple[str, type[BaseModel]]] = []
    for title, names in by_section.items():
        out += ["", f"## {title}", "", *table(model, names, env=True)]
        for name in names:
            nested += [(name, m) for m in nested_models(model.model_fields[name].annotation)]
    for name, sub in parts.items():
        out += ["", f"## {name}", ""]
        if sub.__doc__:
            out += [" ".join(inspect.cleandoc(sub.__doc__).split()), ""]
        out += table(sub, list(sub.model_fields), env=True, section=name)
        for short, field in sub.model_fields.items():
            flat = sub.flat_name(short)  # type: ignore[attr-defined]
            nested += [(flat, m) for m in nested_models(field.annotation)]
    for name, sub in nested:
        out += ["", f"### {sub.__name__} (in `SPILLWAY_{name.upper()}`)", ""]
        if sub.__doc__:
            out += [" ".join(inspect.cleandoc(sub.__doc__).split()), ""]
        out += table(sub, list(sub.model_fields), env=False)
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate docs/configuration.md.")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help=f"write {TARGET}")
    mode.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    args = parser.parse_args(argv)
    text = generate()
    if args.write:
        TARGET.parent.mkdir(exist_ok=True)
        TARGET.write_text(text, encoding="utf-8")
        print(f"wrote {TARGET.relative_to(PROJECT_ROOT)}")
    elif args.check:
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        if current != text:
            print(
                f"{TARGET.relative_to(PROJECT_ROOT)} is out of date: run scripts/gen-config-docs",
                file=sys.stderr,
            )
            return 1
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
