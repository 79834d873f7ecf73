"""Unit tests of app.templating: the shipped templates, the sandbox, locales, addresses."""

from __future__ import annotations

import json
import shutil
from decimal import Decimal
from pathlib import Path
from typing import Any

import jinja2
import pytest
from jinja2.sandbox import SecurityError
from markupsafe import Markup

from app.errors import RenderError, UnknownTemplateError, ValidationError
from app.templating import (
    MAX_SUBJECT_CHARS,
    RenderedParts,
    TemplateConfigError,
    TemplateStore,
    format_date,
    money,
    safe_url,
    validate_address,
    validate_sender,
)

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"


@pytest.fixture(scope="module")
def store() -> TemplateStore:
    return TemplateStore(TEMPLATES)


def make_store(
    root: Path,
    parts: dict[str, str],
    *,
    name: str = "t",
    versions: tuple[str, ...] = ("v1",),
    manifest: dict[str, Any] | None = None,
) -> TemplateStore:
    """A store with one template whose every version has ``parts`` (file name -> source)."""
    defaults = {"subject.txt.j2": "subject", "body.html.j2": "<p>html</p>", "body.txt.j2": "text"}
    folder = root / name
    for version in versions:
        (folder / version).mkdir(parents=True)
        for file, source in {**defaults, **parts}.items():
            (folder / version / file).write_text(source, encoding="utf-8")
    (folder / "template.json").write_text(
        json.dumps(
            manifest or {"description": "test", "latest": versions[-1], "versions": list(versions)}
        ),
        encoding="utf-8",
    )
    return TemplateStore(root)


# --------------------------------------------------------------------------- shipped templates


@pytest.mark.parametrize("name", ["order_confirmation", "password_reset", "newsletter"])
def test_every_template_renders_its_sample_data(store: TemplateStore, name: str) -> None:
    for version in store.versions(name):
        out = store.render(name, store.sample_data(name), version=version)
        assert isinstance(out, RenderedParts)
        assert out.template == name
        assert out.template_version == version
        assert out.subject and out.html and out.text
        assert "\n" not in out.subject
        assert out.html.startswith("<!DOCTYPE html>")
        assert out.html.rstrip().endswith("</html>")
        assert "Spillway Shop" in out.subject + out.text


def test_shipped_templates_pass_the_self_check(store: TemplateStore) -> None:
    assert store.names() == ["newsletter", "order_confirmation", "password_reset"]
    assert store.check() == []


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_order_confirmation_lists_every_line_in_both_parts(
    store: TemplateStore, version: str
) -> None:
    data = store.sample_data("order_confirmation")
    out = store.render("order_confirmation", data, version=version)
    assert "Ada Lovelace" in out.html and "Ada Lovelace" in out.text
    assert "SO-10482" in out.subject
    for part in (out.html, out.text):
        for line in data["order"]["lines"]:
            assert line["name"] in part
            assert line["sku"] in part
        assert "12.50 EUR" in part  # unit price
        assert "25.00 EUR" in part  # 2 x 12.50: the per-line subtotal
        assert "53.80 EUR" in part  # total
        assert "12 Analytical Row" in part  # shipping address
    assert out.html.count("<tr>") >= len(data["order"]["lines"]) + 2


def test_password_reset_shows_link_and_optional_ip(store: TemplateStore) -> None:
    data = store.sample_data("password_reset")
    out = store.render("password_reset", data)
    assert data["reset_url"] in out.text
    # In HTML the "&" of the query string is (correctly) escaped inside href.
    assert data["reset_url"].replace("&", "&amp;") in out.html
    assert "30 minutes" in out.text and "203.0.113.42" in out.text
    del data["request_ip"]
    out = store.render("password_reset", data)
    assert "IP address" not in out.text and "IP address" not in out.html


def test_newsletter_lists_articles_and_unsubscribe(store: TemplateStore) -> None:
    data = store.sample_data("newsletter")
    out = store.render("newsletter", data)
    assert data["issue"]["title"] in out.subject
    for article in data["issue"]["articles"]:
        for part in (out.html, out.text):
            assert article["title"] in part and article["url"] in part
    assert data["unsubscribe_url"] in out.text and data["unsubscribe_url"] in out.html


def test_latest_is_the_default_and_explicit_versions_are_honoured(
    store: TemplateStore,
) -> None:
    data = store.sample_data("order_confirmation")
    assert store.latest("order_confirmation") == "v2"
    latest = store.render("order_confirmation", data)
    v1 = store.render("order_confirmation", data, version="v1")
    v2 = store.render("order_confirmation", data, version="v2")
    assert latest == v2
    assert v1.template_version == "v1"
    assert "Estimated delivery: Thu, 12 Jun 2025" in v2.text
    assert "Estimated delivery" not in v1.text


def test_v2_estimated_delivery_is_optional(store: TemplateStore) -> None:
    data = store.sample_data("order_confirmation")
    del data["order"]["estimated_delivery"]
    out = store.render("order_confirmation", data)
    assert "as soon as your parcel ships" in out.text


def test_helpers(store: TemplateStore) -> None:
    assert store.versions("order_confirmation") == ["v1", "v2"]
    info = store.info("order_confirmation")
    assert info.latest == "v2" and info.locales == ("de",) and "order" in info.required
    sample = store.sample_data("order_confirmation")
    sample["order"]["lines"].clear()  # a copy: the store's own sample is untouched
    assert store.sample_data("order_confirmation")["order"]["lines"]
    with pytest.raises(UnknownTemplateError):
        store.versions("nope")
    with pytest.raises(UnknownTemplateError):
        store.sample_data("nope")


# --------------------------------------------------------------------------- errors


def test_unknown_template_names_the_known_ones(store: TemplateStore) -> None:
    with pytest.raises(UnknownTemplateError) as err:
        store.render("invoice", {})
    assert "'invoice'" in str(err.value)
    assert "order_confirmation" in str(err.value)
    assert err.value.reason == "unknown_template" and not err.value.retriable


def test_unknown_version_names_the_existing_ones(store: TemplateStore) -> None:
    with pytest.raises(UnknownTemplateError) as err:
        store.render("order_confirmation", store.sample_data("order_confirmation"), version="v7")
    assert "'v7'" in str(err.value) and "v1, v2" in str(err.value)


def test_missing_variable_names_it(store: TemplateStore) -> None:
    data = store.sample_data("order_confirmation")
    del data["order"]
    with pytest.raises(RenderError) as err:
        store.render("order_confirmation", data, version="v1")
    message = str(err.value)
    assert "'order' is undefined" in message
    assert "order_confirmation" in message and "v1" in message and "subject" in message
    assert isinstance(err.value.__cause__, jinja2.UndefinedError)
    assert err.value.reason == "render_error" and not err.value.retriable


def test_missing_nested_value_names_attribute_part_and_line(store: TemplateStore) -> None:
    data = store.sample_data("order_confirmation")
    del data["order"]["total"]  # passed through the money filter
    with pytest.raises(RenderError) as err:
        store.render("order_confirmation", data)
    message = str(err.value)
    assert "'total'" in message and "missing variable" in message
    assert "html part (body.html.j2, line " in message


@pytest.mark.parametrize(
    ("source", "cause"),
    [
        ("{{ 1 + name }}", TypeError),
        ("{{ 1 / zero }}", ZeroDivisionError),
        ("{{ name | money }}", ValueError),
        ("{{ items[5] }}", jinja2.UndefinedError),
        ("{% for x in 5 %}{% endfor %}", TypeError),
    ],
)
def test_errors_inside_templates_become_render_errors(
    tmp_path: Path, source: str, cause: type[Exception]
) -> None:
    store = make_store(tmp_path, {"body.txt.j2": source})
    with pytest.raises(RenderError) as err:
        store.render("t", {"name": "Ada", "zero": 0, "items": [1]})
    assert isinstance(err.value.__cause__, cause)
    assert "text part (body.txt.j2, line 1)" in str(err.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"template": ["order_confirmation"]},
        {"template": None},
        {"version": ["v1"]},
        {"version": 2},
    ],
)
def test_odd_names_from_bad_events_are_unknown_templates(
    store: TemplateStore, kwargs: dict[str, Any]
) -> None:
    args: dict[str, Any] = {"template": "order_confirmation", **kwargs}
    with pytest.raises(UnknownTemplateError):
        store.render(args.pop("template"), store.sample_data("order_confirmation"), **args)


def test_odd_locale_falls_back_to_default(store: TemplateStore) -> None:
    data = store.sample_data("order_confirmation")
    out = store.render("order_confirmation", data, locale=42)  # type: ignore[arg-type]
    assert out.subject.startswith("Spillway Shop: your order")


def test_error_messages_quoting_data_are_bounded(tmp_path: Path) -> None:
    store = make_store(tmp_path, {"body.txt.j2": "{{ amount | money }}"})
    with pytest.raises(RenderError) as err:
        store.render("t", {"amount": "x" * 100_000})
    assert len(str(err.value)) < 500


def test_check_reports_samples_that_do_not_render(tmp_path: Path) -> None:
    manifest = {"latest": "v1", "versions": ["v1"], "sample_data": {}}
    store = make_store(tmp_path, {"subject.txt.j2": "{{ who }}"}, manifest=manifest)
    problems = store.check()
    assert len(problems) == 1 and "'who' is undefined" in problems[0]


def test_data_that_is_not_a_mapping_is_a_render_error(store: TemplateStore) -> None:
    with pytest.raises(RenderError, match="mapping"):
        store.render("newsletter", ["not", "a", "dict"])  # type: ignore[arg-type]


# --------------------------------------------------------------------------- escaping, sandbox


def test_html_part_is_escaped_and_text_parts_are_not(store: TemplateStore) -> None:
    data = store.sample_data("newsletter")
    data["subscriber"]["name"] = "<script>alert(1)</script>"
    data["issue"]["title"] = "Tips & <b>tricks</b>"
    out = store.render("newsletter", data)
    assert "<script>" not in out.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out.html
    assert "Tips &amp; &lt;b&gt;tricks&lt;/b&gt;" in out.html
    assert "<script>alert(1)</script>" in out.text
    assert out.subject.startswith("Tips & <b>tricks</b>")


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ x.__init__.__globals__ }}",
        "{{ cycler.__init__.__globals__.os }}",
        "{{ lipsum.__globals__['os'].popen('id').read() }}",
        "{{ items.__class__ }}",
        "{{ '{0.__class__}'.format(x) }}",
        "{{ items.append(666) }}",
        "{{ mapping.update(evil=1) }}",
        "{% set _ = mapping.pop('k') %}",
    ],
)
def test_sandbox_blocks_escapes_and_mutation(tmp_path: Path, source: str) -> None:
    store = make_store(tmp_path, {"body.html.j2": source})
    data: dict[str, Any] = {"x": "text", "items": [1, 2], "mapping": {"k": "v"}}
    with pytest.raises(RenderError, match="sandbox violation") as err:
        store.render("t", data)
    assert isinstance(err.value.__cause__, SecurityError)
    assert data == {"x": "text", "items": [1, 2], "mapping": {"k": "v"}}


def test_dotted_lookup_prefers_data_keys_over_dict_methods(tmp_path: Path) -> None:
    source = "{{ order.items }}|{% for k, v in m.items() %}{{ k }}={{ v }}{% endfor %}"
    store = make_store(tmp_path, {"body.txt.j2": source})
    out = store.render("t", {"order": {"items": "3 mugs"}, "m": {"a": 1}})
    assert out.text == "3 mugs|a=1"


def test_unsafe_link_schemes_are_refused(store: TemplateStore) -> None:
    data = store.sample_data("password_reset")
    data["reset_url"] = "javascript:alert(document.cookie)"
    with pytest.raises(RenderError, match="unsafe"):
        store.render("password_reset", data)


# --------------------------------------------------------------------------- locales, subject


@pytest.mark.parametrize("locale", ["de", "de-AT", "de_at", "DE-CH", "de-AT.UTF-8"])
def test_german_locale_falls_back_from_region_to_language(
    store: TemplateStore, locale: str
) -> None:
    out = store.render("order_confirmation", store.sample_data("order_confirmation"), locale=locale)
    assert out.subject == "Spillway Shop: Ihre Bestellung SO-10482 ist bestätigt"
    assert "Gesamtsumme: 53.80 EUR" in out.text
    assert '<html lang="de">' in out.html


@pytest.mark.parametrize("locale", [None, "", "fr", "fr-CA", "en-US", "x" * 500, "../../etc"])
def test_other_locales_fall_back_to_the_default(store: TemplateStore, locale: str | None) -> None:
    out = store.render("order_confirmation", store.sample_data("order_confirmation"), locale=locale)
    assert out.subject == "Spillway Shop: your order SO-10482 is confirmed"


def test_version_without_the_locale_uses_its_default(store: TemplateStore) -> None:
    data = store.sample_data("order_confirmation")
    out = store.render("order_confirmation", data, version="v1", locale="de-AT")
    assert out.subject == "Your Spillway Shop order SO-10482 is confirmed"


def test_locale_fallback_is_per_part_and_most_specific_first(tmp_path: Path) -> None:
    store = make_store(
        tmp_path,
        {"subject.de.txt.j2": "Hallo", "subject.de-AT.txt.j2": "Servus", "body.de.txt.j2": "Text"},
    )
    at = store.render("t", {}, locale="de-AT")
    assert (at.subject, at.text, at.html) == ("Servus", "Text", "<p>html</p>")
    de = store.render("t", {}, locale="de-DE")
    assert (de.subject, de.text) == ("Hallo", "Text")
    assert store.render("t", {}, locale="en").subject == "subject"


def test_subject_is_one_clean_line(tmp_path: Path) -> None:
    store = make_store(tmp_path, {"subject.txt.j2": "{{ s }}"})
    out = store.render("t", {"s": "  Hello\r\nBcc: evil@x.example\n\tworld\x00 "})
    assert out.subject == "Hello Bcc: evil@x.example world"
    out = store.render("t", {"s": "x" * 5000})
    assert len(out.subject) == MAX_SUBJECT_CHARS


def test_none_renders_as_empty(tmp_path: Path) -> None:
    store = make_store(tmp_path, {"body.txt.j2": "Hi {{ name }}!"})
    assert store.render("t", {"name": None}).text == "Hi !"


# --------------------------------------------------------------------------- loading


def test_templates_are_compiled_once_no_file_io_per_render(tmp_path: Path) -> None:
    store = make_store(tmp_path / "tpl", {"body.txt.j2": "Hi {{ name }}"})
    shutil.rmtree(tmp_path / "tpl")  # everything must already be in memory
    assert store.render("t", {"name": "Ada"}).text == "Hi Ada"


@pytest.mark.parametrize(
    ("parts", "manifest", "expected"),
    [
        ({"body.txt.j2": "{% if %}"}, None, "line 1"),
        ({}, {"latest": "v3", "versions": ["v1"]}, "'latest'"),
        ({}, {"versions": []}, "'versions'"),
        ({}, {"versions": ["v1", "v2"]}, "missing"),
        ({}, {"versions": ["../x"]}, "'versions'"),
    ],
)
def test_broken_templates_fail_at_load(
    tmp_path: Path, parts: dict[str, str], manifest: dict[str, Any] | None, expected: str
) -> None:
    with pytest.raises(TemplateConfigError, match=expected):
        make_store(tmp_path, parts, manifest=manifest)


def test_missing_default_part_fails_at_load(tmp_path: Path) -> None:
    make_store(tmp_path, {})
    (tmp_path / "t" / "v1" / "body.txt.j2").unlink()
    with pytest.raises(TemplateConfigError, match=r"body\.txt\.j2"):
        TemplateStore(tmp_path)


def test_missing_root_fails_at_load(tmp_path: Path) -> None:
    with pytest.raises(TemplateConfigError):
        TemplateStore(tmp_path / "nope")


# --------------------------------------------------------------------------- filters


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        (19.9, "EUR", "19.90 EUR"),
        (5, "usd", "5.00 USD"),
        ("12.5", "EUR", "12.50 EUR"),
        (Decimal("0.005"), "EUR", "0.01 EUR"),
        (1234567.891, "JPY", "1234567.89 JPY"),
        (-3.2, "GBP", "-3.20 GBP"),
    ],
)
def test_money(amount: Any, currency: str, expected: str) -> None:
    assert money(amount, currency) == expected


def test_money_accepts_subclasses_like_markup() -> None:
    assert money(Markup("7.5"), "EUR") == "7.50 EUR"


def test_money_defaults_to_usd() -> None:
    assert money(3) == "3.00 USD"


@pytest.mark.parametrize("amount", [True, None, "abc", "nan", float("inf"), [1]])
def test_money_refuses_non_numbers(amount: Any) -> None:
    with pytest.raises(ValueError):
        money(amount, "EUR")


def test_line_subtotal_is_exact(tmp_path: Path) -> None:
    store = make_store(tmp_path, {"body.txt.j2": "{{ p | mul(q) | money('EUR') }}"})
    assert store.render("t", {"p": 0.1, "q": 3}).text == "0.30 EUR"
    assert store.render("t", {"p": "19.90", "q": "2"}).text == "39.80 EUR"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2025-06-12", "2025-06-12"),
        ("2025-06-12T23:30:00Z", "2025-06-12"),
        (1749686400000, "2025-06-12"),
        ("1749686400000", "2025-06-12"),
    ],
)
def test_format_date(value: Any, expected: str) -> None:
    assert format_date(value) == expected


def test_safe_url() -> None:
    assert safe_url(" https://x.example/a?b=1 ") == "https://x.example/a?b=1"
    for bad in ("javascript:alert(1)", "data:text/html,x", "//x.example", "x.example"):
        with pytest.raises(ValueError):
            safe_url(bad)


# --------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("ada@example.com", "ada@example.com"),
        ("Ada.Lovelace@EXAMPLE.COM", "Ada.Lovelace@example.com"),
        ("  grace+news@example.org ", "grace+news@example.org"),
        ("jörg@münchen.example", "jörg@münchen.example"),
    ],
)
def test_validate_address_accepts_and_normalizes(address: str, expected: str) -> None:
    assert validate_address(address) == expected


@pytest.mark.parametrize(
    "address",
    [
        "",
        "   ",
        "ada",
        "ada@",
        "@example.com",
        "ada@example",
        "a..b@example.com",
        "ada@exa mple.com",
        "Ada <ada@example.com>",
        "ada@example.com\r\nBcc: evil@example.com",
        "ada@example.com, grace@example.com",
        "x" * 250 + "@example.com",
    ],
)
def test_validate_address_rejects(address: str) -> None:
    with pytest.raises(ValidationError, match="email address") as err:
        validate_address(address)
    assert err.value.reason == "invalid_field"


def test_validate_address_rejects_non_strings() -> None:
    with pytest.raises(ValidationError):
        validate_address(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("sender", "expected"),
    [
        ("Spillway Shop <no-reply@shop.example>", "Spillway Shop <no-reply@shop.example>"),
        ("no-reply@Shop.Example", "no-reply@shop.example"),
        ("<no-reply@shop.example>", "no-reply@shop.example"),
        ('"Doe, Jane" <jane@example.com>', '"Doe, Jane" <jane@example.com>'),
        ("Doe, Jane <jane@example.com>", '"Doe, Jane" <jane@example.com>'),
        ("Jörg Müller <j@example.com>", "Jörg Müller <j@example.com>"),
        ('"Say \\"hi\\"" <j@example.com>', '"Say \\"hi\\"" <j@example.com>'),
    ],
)
def test_validate_sender_accepts_display_form(sender: str, expected: str) -> None:
    assert validate_sender(sender) == expected


@pytest.mark.parametrize(
    "sender",
    [
        "Shop <not-an-address>",
        "Shop <a@example.com> trailing",
        "Bad\r\nBcc: x@example.com <a@example.com>",
        "Shop <<a@example.com>>",
        "",
    ],
)
def test_validate_sender_rejects(sender: str) -> None:
    with pytest.raises(ValidationError):
        validate_sender(sender)
