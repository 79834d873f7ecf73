"""The configuration reference is generated from Settings and must be current."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, SecretStr

from app.docs import TARGET, generate, main
from app.settings import SECTIONS, Settings


def test_committed_configuration_reference_is_current() -> None:
    assert TARGET.exists(), "docs/configuration.md is missing: run scripts/gen-config-docs"
    assert TARGET.read_text(encoding="utf-8") == generate(), (
        "docs/configuration.md is out of date: run scripts/gen-config-docs"
    )
    assert main(["--check"]) == 0


def test_every_setting_is_documented_with_its_variable() -> None:
    text = generate()
    for name in Settings.env_names():
        assert f"`SPILLWAY_{name.upper()}`" in text
    for section, cls in SECTIONS.items():
        for short, field in cls.model_fields.items():
            assert f"`{section}.{short}`" in text
            assert field.description, f"Settings.{section}.{short} has no description"
    for name, field in Settings.model_fields.items():
        assert field.description, f"Settings.{name} has no description"


class Nested(BaseModel):
    """A nested thing."""

    key: str = Field("k", description="A key.")


class Demo(BaseModel):
    # --- first ----
    mode: Literal["a", "b"] = Field("a", description="Mode | with a pipe.")
    token: SecretStr = Field(SecretStr("hunter2-hunter2"), description="Secret.")
    # --- second ----
    items: list[Nested] = Field(default_factory=list, description="Things.")
    maybe: int | None = Field(None, description="Maybe.")


def test_rendering_sections_types_defaults_and_secrets() -> None:
    text = generate(Demo)
    assert "## first" in text and "## second" in text
    assert "| `SPILLWAY_MODE` | `a` \\| `b` | `a` | Mode \\| with a pipe. |" in text
    assert "hunter2" not in text
    assert "| `SPILLWAY_MAYBE` | integer or none | none | Maybe. |" in text
    assert "### Nested (in `SPILLWAY_ITEMS`)" in text and "| `key` | string | `k` |" in text
