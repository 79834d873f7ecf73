"""Email templates: loading, sandboxed rendering, and address checks.

Layout of the templates folder (``settings.templates_dir``)::

    templates/
      order_confirmation/
        template.json           {"description", "latest", "versions", "required", "sample_data"}
        v1/subject.txt.j2       one folder per version, three parts each
        v1/body.html.j2
        v1/body.txt.j2
        v2/subject.de.txt.j2    optional locale variant of a part

Everything is read and compiled once, in ``TemplateStore.__init__``; ``render()``
does no file I/O and no parsing, only dictionary look-ups and the compiled
templates' render functions. Templates run in Jinja's immutable sandbox with
``StrictUndefined``: event data can neither execute code nor mutate anything,
and a missing variable is an error instead of an empty string.
"""

from __future__ import annotations

import copy
import json
import re
import types
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from email import policy as email_policy
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import jinja2
from email_validator import EmailNotValidError, validate_email
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from app.errors import RenderError, UnknownTemplateError, ValidationError

__all__ = [
    "HeaderValues",
    "RenderedParts",
    "TemplateConfigError",
    "TemplateInfo",
    "TemplateStore",
    "header_values",
    "validate_address",
    "validate_sender",
]

#: RFC 5322 caps a header line at 998 characters.
MAX_SUBJECT_CHARS = 998
#: RFC 5321: a path (hence an address) holds at most 254 characters.
MAX_ADDRESS_CHARS = 254
#: A sender ("Name <address>"): one header line.
MAX_SENDER_CHARS = 998
MANIFEST = "template.json"

# Part file names: subject.txt.j2, body.html.j2, body.txt.j2, each optionally
# with a locale tag before the extension (subject.de.txt.j2, body.de-AT.html.j2).
_PART_FILE = re.compile(
    r"(?P<stem>subject|body)(?:\.(?P<locale>[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*))?"
    r"\.(?P<ext>txt|html)\.j2"
)
_PARTS = {("subject", "txt"): "subject", ("body", "html"): "html", ("body", "txt"): "text"}
_KINDS = ("subject", "html", "text")
_VERSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# C0 controls, DEL and C1 controls left over after whitespace collapsing: never valid
# in a header (the email package refuses U+0085 and friends as line breaks).
_HEADER_JUNK = dict.fromkeys([*range(0x20), *range(0x7F, 0xA0)])


class TemplateConfigError(Exception):
    """The templates folder itself is broken (bad manifest, syntax error, missing part).

    Raised only while loading, never by ``render()``: a worker should refuse to
    start rather than dead-letter every message.
    """


@dataclass(frozen=True, slots=True)
class RenderedParts:
    subject: str
    html: str
    text: str
    template: str
    template_version: str


@dataclass(frozen=True, slots=True)
class TemplateInfo:
    name: str
    description: str
    latest: str
    versions: tuple[str, ...]
    required: tuple[str, ...]
    #: Locale tags that have at least one part variant in any version (normalized, e.g. "de").
    locales: tuple[str, ...]


class _Part(NamedTuple):
    kind: str  # "subject" | "html" | "text"
    file: str  # file name inside the version folder, for error messages
    compiled: jinja2.Template


class _Parts(NamedTuple):
    subject: _Part
    html: _Part
    text: _Part


@dataclass(frozen=True, slots=True)
class _Version:
    name: str
    default: _Parts
    #: Normalized locale tag -> parts, with the per-part fallback already applied.
    by_locale: dict[str, _Parts]

    def select(self, locale: str | None) -> _Parts:
        if locale and self.by_locale and isinstance(locale, str):
            for tag in _locale_candidates(locale[:64]):
                parts = self.by_locale.get(tag)
                if parts is not None:
                    return parts
        return self.default


@dataclass(frozen=True, slots=True)
class _Template:
    info: TemplateInfo
    sample_data: dict[str, Any]
    versions: dict[str, _Version]
    latest: _Version


# --------------------------------------------------------------------------- filters


def _check_defined(value: Any) -> None:
    # A filter receiving a StrictUndefined should fail as "missing variable", not
    # "not a number": str() on a StrictUndefined raises its UndefinedError.
    if isinstance(value, jinja2.Undefined):
        str(value)
        raise jinja2.UndefinedError("undefined value")


def _to_decimal(value: Any) -> Decimal:
    # Hot path (several calls per order line): exact type checks first.
    kind = type(value)
    if kind is int:
        return Decimal(value)
    if kind is str or kind is float:
        try:
            # A float goes through its repr so that 19.9 becomes Decimal("19.9"),
            # not 19.8999999999999985789...; Decimal() itself ignores surrounding spaces.
            number = Decimal(value if kind is str else repr(value))
        except InvalidOperation:
            raise ValueError(f"not a number: {value!r}") from None
    elif kind is Decimal:
        number = value
    else:
        return _to_decimal_slow(value)
    if not number.is_finite():
        raise ValueError(f"not a finite number: {value!r}")
    return number


def _to_decimal_slow(value: Any) -> Decimal:
    _check_defined(value)
    if isinstance(value, bool):
        raise ValueError(f"not a number: {value!r}")
    # Subclasses (Markup is a str, IntEnum an int, ...): convert to the base type.
    for base in (int, float, str, Decimal):
        if isinstance(value, base):
            return _to_decimal(base(value))
    raise ValueError(f"not a number: {value!r}")


_CENT = Decimal("0.01")


def money(amount: Any, currency: str = "USD") -> str:
    """``19.9, "EUR"`` -> ``"19.90 EUR"``: two decimals, half-up, ISO code after."""
    if type(currency) is not str:
        _check_defined(currency)
        if not isinstance(currency, str):
            raise ValueError(f"currency must be a string, not {currency!r}")
    value = _to_decimal(amount).quantize(_CENT, rounding=ROUND_HALF_UP)
    return f"{value:.2f} {currency.strip().upper()}"


def multiply(value: Any, factor: Any) -> Decimal:
    """Exact product of two numbers (``unit_price | mul(qty)``), whatever their types."""
    return _to_decimal(value) * _to_decimal(factor)


def format_date(value: Any, fmt: str = "%Y-%m-%d") -> str:
    """Format an ISO-8601 string, epoch milliseconds, ``date`` or ``datetime``."""
    _check_defined(value)
    moment: date
    if isinstance(value, date):  # datetime is a date too
        moment = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        moment = datetime.fromtimestamp(value / 1000, tz=UTC)
    elif isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            moment = datetime.fromtimestamp(int(text) / 1000, tz=UTC)
        else:
            moment = datetime.fromisoformat(text)
    else:
        raise ValueError(f"not a date: {value!r}")
    return moment.strftime(fmt)


def safe_url(value: Any) -> str:
    """Pass http(s)/mailto URLs through; refuse ``javascript:`` and friends in links."""
    _check_defined(value)
    if not isinstance(value, str):
        raise ValueError(f"URL must be a string, not {value!r}")
    url = value.strip()
    if urlsplit(url).scheme.lower() not in ("http", "https", "mailto"):
        raise ValueError(f"refusing URL with an unsafe or missing scheme: {url!r}")
    return url


def _finalize(value: Any) -> Any:
    # A None in the data renders as nothing rather than the word "None".
    return "" if value is None else value


# --------------------------------------------------------------------------- store


class _DataEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with ``a.b`` looking up dict keys before attributes.

    Event data is decoded JSON, i.e. dicts: trying the key first skips a raised
    and caught AttributeError per ``.`` (the sandbox's hottest path) and stops
    dict methods from shadowing data (``order.items`` is the key, not the method).
    As safe as ``a["b"]``: only the dict's own values are reachable this way;
    everything else still goes through the sandbox's checks.
    """

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict:
            try:
                return obj[attribute]
            except KeyError:
                pass
        return super().getattr(obj, attribute)


def _make_environment(root: Path) -> ImmutableSandboxedEnvironment:
    env = _DataEnvironment(
        # The loader is only used at start-up and for {% include %}/{% extends %};
        # event data never chooses a file.
        loader=jinja2.FileSystemLoader(root),
        # HTML parts escape, subject and text parts do not: keyed by file name.
        autoescape=jinja2.select_autoescape(
            enabled_extensions=("html.j2",), default_for_string=False, default=False
        ),
        undefined=jinja2.StrictUndefined,
        finalize=_finalize,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,  # no stat() per include
        cache_size=-1,  # includes stay compiled once loaded
    )
    env.filters.update(money=money, mul=multiply, date=format_date, url=safe_url)
    return env


class TemplateStore:
    """All templates under ``root``, compiled once; ``render()`` is the hot path."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise TemplateConfigError(f"templates folder {self.root} does not exist")
        self._env = _make_environment(self.root)
        self._templates: dict[str, _Template] = {}
        for folder in sorted(self.root.iterdir()):
            # "_shared", ".git" and loose files are not templates.
            if folder.is_dir() and not folder.name.startswith(("_", ".")):
                self._templates[folder.name] = self._load_template(folder)

    # -- public helpers (CLI preview, demo) ----------------------------------

    def names(self) -> list[str]:
        return sorted(self._templates)

    def versions(self, name: str) -> list[str]:
        return list(self._get(name).info.versions)

    def latest(self, name: str) -> str:
        return self._get(name).info.latest

    def info(self, name: str) -> TemplateInfo:
        return self._get(name).info

    def sample_data(self, name: str) -> dict[str, Any]:
        """A fresh copy of the manifest's sample data (safe to modify)."""
        return copy.deepcopy(self._get(name).sample_data)

    def check(self) -> list[str]:
        """Render every version and locale with its sample data; return the problems.

        For CI and ``--check`` style commands; an empty list means all is well.
        """
        problems: list[str] = []
        for name, tpl in self._templates.items():
            for version in tpl.versions.values():
                for locale in (None, *version.by_locale):
                    try:
                        self.render(name, tpl.sample_data, version=version.name, locale=locale)
                    except RenderError as exc:
                        problems.append(str(exc))
        return problems

    # -- rendering -------------------------------------------------------------

    def render(
        self,
        template: str,
        data: Mapping[str, Any],
        *,
        version: str | None = None,
        locale: str | None = None,
    ) -> RenderedParts:
        """Render subject, HTML and text of ``template`` with ``data``.

        ``version`` None (or "") means the manifest's latest. ``locale`` picks
        locale variants per part, falling back ``de-AT`` -> ``de`` -> default.
        Raises ``UnknownTemplateError`` or ``RenderError``, nothing else.
        """
        # isinstance guards: an unhashable name from a bad event must not raise TypeError.
        tpl = self._templates.get(template) if isinstance(template, str) else None
        if tpl is None:
            raise UnknownTemplateError(
                f"unknown template {template!r}; known: {', '.join(self.names()) or 'none'}"
            )
        if version:
            chosen = tpl.versions.get(version) if isinstance(version, str) else None
            if chosen is None:
                raise UnknownTemplateError(
                    f"template {template!r} has no version {version!r}; "
                    f"versions: {', '.join(tpl.info.versions)}"
                )
        else:
            chosen = tpl.latest

        if not isinstance(data, Mapping):
            raise RenderError(
                f"template {template!r}: data must be a mapping, not {type(data).__name__}"
            )
        parts = chosen.select(locale)
        part = parts.subject
        try:
            subject = part.compiled.render(data)
            part = parts.html
            html = part.compiled.render(data)
            part = parts.text
            text = part.compiled.render(data)
        except Exception as exc:  # anything at all: the contract is RenderError only
            raise RenderError(_describe_failure(template, chosen.name, part, exc)) from exc

        return RenderedParts(
            subject=_clean_subject(subject),
            html=html,
            text=text,
            template=template,
            template_version=chosen.name,
        )

    # -- loading ---------------------------------------------------------------

    def _get(self, name: str) -> _Template:
        try:
            return self._templates[name]
        except (KeyError, TypeError):
            raise UnknownTemplateError(
                f"unknown template {name!r}; known: {', '.join(self.names()) or 'none'}"
            ) from None

    def _load_template(self, folder: Path) -> _Template:
        name = folder.name
        manifest = _read_manifest(folder / MANIFEST)
        versions = manifest["versions"]
        latest = manifest["latest"]
        loaded = {v: self._load_version(name, v) for v in versions}
        locales = sorted({tag for v in loaded.values() for tag in v.by_locale})
        info = TemplateInfo(
            name=name,
            description=manifest["description"],
            latest=latest,
            versions=tuple(versions),
            required=tuple(manifest["required"]),
            locales=tuple(locales),
        )
        return _Template(
            info=info,
            sample_data=manifest["sample_data"],
            versions=loaded,
            latest=loaded[latest],
        )

    def _load_version(self, name: str, version: str) -> _Version:
        folder = self.root / name / version
        if not folder.is_dir():
            raise TemplateConfigError(f"{folder}: version folder listed in manifest is missing")
        # (kind, locale tag or "") -> compiled part
        found: dict[tuple[str, str], _Part] = {}
        for path in sorted(folder.iterdir()):
            match = _PART_FILE.fullmatch(path.name)
            if match is None or not path.is_file():
                continue  # partials for {% include %}, READMEs, ...
            kind = _PARTS.get((match["stem"], match["ext"]))
            if kind is None:
                continue  # e.g. subject.html.j2: not a part we know
            tag = _normalize_locale(match["locale"] or "")
            if (kind, tag) in found:
                raise TemplateConfigError(f"{path}: duplicate {kind} part for locale {tag!r}")
            found[(kind, tag)] = _Part(
                kind, path.name, self._compile(f"{name}/{version}/{path.name}")
            )

        missing = [k for k in _KINDS if (k, "") not in found]
        if missing:
            files = {"subject": "subject.txt.j2", "html": "body.html.j2", "text": "body.txt.j2"}
            raise TemplateConfigError(
                f"{folder}: missing default part(s): {', '.join(files[k] for k in missing)}"
            )

        def resolve(tag: str) -> _Parts:
            chain = [*_locale_candidates(tag), ""]
            picked = [next(found[(k, t)] for t in chain if (k, t) in found) for k in _KINDS]
            return _Parts(*picked)

        tags = {tag for (_, tag) in found if tag}
        return _Version(name=version, default=resolve(""), by_locale={t: resolve(t) for t in tags})

    def _compile(self, loader_name: str) -> jinja2.Template:
        try:
            compiled = self._env.get_template(loader_name)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateConfigError(
                f"{self.root / loader_name}, line {exc.lineno}: {exc.message}"
            ) from exc
        except (jinja2.TemplateError, OSError, UnicodeDecodeError) as exc:
            raise TemplateConfigError(f"{self.root / loader_name}: {exc}") from exc
        # Jinja keeps globals as ChainMap(template's, environment's) and flattens it
        # on every render (~8 us per part here). Ours never change after start-up:
        # flatten once.
        compiled.globals = dict(compiled.globals)
        return compiled


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TemplateConfigError(f"{path} is missing") from None
    except (OSError, ValueError) as exc:
        raise TemplateConfigError(f"{path}: cannot read: {exc}") from exc
    if not isinstance(manifest, dict):
        raise TemplateConfigError(f"{path}: expected a JSON object")

    versions = manifest.get("versions")
    if (
        not isinstance(versions, list)
        or not versions
        or not all(isinstance(v, str) and _VERSION_NAME.fullmatch(v) for v in versions)
        or len(set(versions)) != len(versions)
    ):
        raise TemplateConfigError(f"{path}: 'versions' must be a non-empty list of folder names")
    latest = manifest.get("latest", versions[-1])
    if latest not in versions:
        raise TemplateConfigError(f"{path}: 'latest' {latest!r} is not one of {versions}")
    required = manifest.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise TemplateConfigError(f"{path}: 'required' must be a list of strings")
    sample = manifest.get("sample_data", {})
    if not isinstance(sample, dict):
        raise TemplateConfigError(f"{path}: 'sample_data' must be an object")
    description = manifest.get("description", "")
    if not isinstance(description, str):
        raise TemplateConfigError(f"{path}: 'description' must be a string")
    return {
        "versions": versions,
        "latest": latest,
        "required": required,
        "sample_data": sample,
        "description": description,
    }


# --------------------------------------------------------------------------- helpers


def _normalize_locale(tag: str) -> str:
    # "de_AT.UTF-8" -> "de-at"; file tags and requested locales meet in this form.
    return tag.split(".", 1)[0].split("@", 1)[0].strip().replace("_", "-").lower()


@lru_cache(maxsize=256)  # bounded (and keys cut to 64 chars): locales come from event data
def _locale_candidates(locale: str) -> tuple[str, ...]:
    """``"de-AT"`` -> ``("de-at", "de")``: most specific first, no default."""
    tag = _normalize_locale(locale)
    subtags = [s for s in tag.split("-") if s]
    return tuple("-".join(subtags[:n]) for n in range(len(subtags), 0, -1))


def _clean_subject(raw: str) -> str:
    # Collapse every run of whitespace (newlines included) to one space: a subject
    # is one header line, and a stray CR/LF must never reach the header block.
    subject = " ".join(raw.split())
    if not subject.isprintable():  # rare: NUL and other controls are dropped
        subject = subject.translate(_HEADER_JUNK)
    return subject[:MAX_SUBJECT_CHARS]


def _describe_failure(template: str, version: str, part: _Part, exc: Exception) -> str:
    where = f"template {template!r} version {version!r}, {part.kind} part ({part.file}"
    line = _template_line(exc, part.compiled.filename)
    where += f", line {line})" if line else ")"
    if isinstance(exc, SecurityError):
        detail = f"sandbox violation: {exc}"
    elif isinstance(exc, jinja2.UndefinedError):
        detail = f"missing variable: {exc}"
    else:
        detail = f"{type(exc).__name__}: {exc}"
    return f"{where}: {_shorten(detail)}"


def _shorten(text: str, limit: int = 300) -> str:
    # Messages quote event data and end up in dead letters and logs: keep them short.
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _template_line(exc: BaseException, filename: str | None) -> int | None:
    # Jinja rewrites tracebacks so that template lines appear as frames of the
    # template's file; the innermost such frame is where it went wrong.
    if filename is None:
        return None
    line = None
    tb: types.TracebackType | None = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


# --------------------------------------------------------------------------- addresses


def validate_address(address: str) -> str:
    """Syntax-check a bare recipient address; return it normalized (domain lower-cased).

    No DNS. Surrounding whitespace is ignored; the ``Name <addr>`` form is refused.
    """
    if not isinstance(address, str):
        raise ValidationError(f"email address must be a string, not {type(address).__name__}")
    candidate = address.strip()
    if not candidate:
        raise ValidationError("email address is empty")
    if len(candidate) > MAX_ADDRESS_CHARS:  # checked first: the validator is slow on megabytes
        raise ValidationError(
            f"invalid email address {_shorten(repr(candidate[:120]), 100)}: longer than "
            f"{MAX_ADDRESS_CHARS} characters"
        )
    try:
        checked = validate_email(candidate, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValidationError(
            f"invalid email address {_shorten(repr(candidate), 100)}: {exc}"
        ) from None
    return checked.normalized


# "Name <addr>", '"Doe, Jane" <addr>', "<addr>"
_DISPLAY_FORM = re.compile(r"(?P<name>[^<>]*?)\s*<(?P<addr>[^<>]*)>")
_NEEDS_QUOTES = re.compile(r'[()<>\[\]:;@\\,."]')


def validate_sender(sender: str) -> str:
    """Like ``validate_address`` but also accepts ``Name <addr>``.

    Returns ``addr`` or ``Name <addr>`` with the address normalized and the name
    quoted when it contains specials (``"Doe, Jane" <jane@x.example>``). Names may
    be non-ASCII; encoding them for a header is the provider adapter's job.
    """
    if not isinstance(sender, str):
        raise ValidationError(f"sender must be a string, not {type(sender).__name__}")
    text = sender.strip()
    if len(text) > MAX_SENDER_CHARS:  # first: the display-form regex is quadratic on blanks
        raise ValidationError(
            f"invalid sender {_shorten(repr(text[:120]), 100)}: longer than {MAX_SENDER_CHARS} "
            "characters"
        )
    match = _DISPLAY_FORM.fullmatch(text)
    if match is None:
        return validate_address(text)
    name = match["name"].strip()
    if len(name) >= 2 and name[0] == name[-1] == '"':
        name = re.sub(r"\\(.)", r"\1", name[1:-1])
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name):
        raise ValidationError(
            f"invalid sender {_shorten(repr(text), 100)}: control characters in the name"
        )
    address = validate_address(match["addr"])
    if not name:
        return address
    if _NEEDS_QUOTES.search(name):
        escaped = name.replace("\\", "\\\\").replace('"', '\\"')
        name = f'"{escaped}"'
    return f"{name} <{address}>"


# --------------------------------------------------------------------------- headers
#
# Values that end up in a provider's headers are checked and encoded here, at render
# time (issue 13): a value that cannot be sent dead-letters its email with reason
# ``invalid_header`` instead of failing at the provider, where it would count against
# the provider's breaker.

#: What an event id may hold: RFC 5322 atext plus ".", ":" and "@", at most 255
#: characters. It travels as the HTTP Idempotency-Key, in the SMTP Message-ID
#: (``<event_id@spillway>``) and as X-Spillway-Event-Id.
_EVENT_ID = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.:@-]{1,255}")
#: Unicode categories refused in a display name: controls, surrogates, line and
#: paragraph separators (U+2028 makes the email package refuse the From header).
_BAD_NAME_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})
_SMTP = email_policy.SMTP


@dataclass(frozen=True, slots=True)
class HeaderValues:
    """Header values as they go to a provider: ASCII addresses (IDNA domains)."""

    to: str
    sender: str
    subject: str


def _header_error(what: str, value: str, why: str) -> ValidationError:
    shown = _shorten(repr(value.encode("utf-8", "backslashreplace").decode()), 100)
    return ValidationError(
        f"{what} {shown} cannot be sent as a header: {why}", reason="invalid_header"
    )


def check_event_id(event_id: str) -> str:
    if not isinstance(event_id, str) or not _EVENT_ID.fullmatch(event_id):
        raise _header_error(
            "event id",
            str(event_id),
            "use 1-255 characters of A-Z a-z 0-9 and !#$%&'*+/=?^_`{|}~.:@-",
        )
    return event_id


def _ascii_address(address: str, what: str) -> str:
    if address.isascii():
        return address
    try:
        ascii_form = validate_email(address, check_deliverability=False).ascii_email
    except EmailNotValidError as exc:
        raise _header_error(what, address, str(exc)) from None
    if not ascii_form:
        raise _header_error(what, address, "a non-ASCII local part needs SMTPUTF8")
    return str(ascii_form)


def _fold(name: str, value: str) -> None:
    # The SMTP adapter's encoding (RFC 2047 words, folded lines): whatever it refuses
    # is refused here.
    try:
        _SMTP.header_factory(name, value).fold(policy=_SMTP)
    except Exception as exc:
        raise _header_error(name, value, f"{type(exc).__name__}: {exc}") from None


def header_values(*, event_id: str, to: str, sender: str, subject: str) -> HeaderValues:
    """Check and encode what goes into headers; ``ValidationError`` with reason
    ``invalid_header`` names the bad value. ``to`` and ``sender`` must already be
    validated (``validate_address``/``validate_sender``), ``subject`` cleaned."""
    check_event_id(event_id)
    to_ascii = _ascii_address(to, "recipient")
    match = _DISPLAY_FORM.fullmatch(sender)
    if match is None:
        sender_out = _ascii_address(sender, "sender")
    else:
        name = match["name"]
        if not (name.isascii() and name.isprintable()):
            bad = next(
                (ch for ch in name if unicodedata.category(ch) in _BAD_NAME_CATEGORIES), None
            )
            if bad is not None:
                raise _header_error("sender name", name, f"it holds U+{ord(bad):04X}")
        sender_out = f"{name} <{_ascii_address(match['addr'], 'sender')}>"
        if not name.isascii():
            _fold("From", sender_out)
    if not (subject.isascii() and subject.isprintable()):
        if any(unicodedata.category(ch) in _BAD_NAME_CATEGORIES for ch in subject):
            raise _header_error("subject", subject, "it holds a control or separator character")
        _fold("Subject", subject)
    if len(subject) > MAX_SUBJECT_CHARS:
        raise _header_error("subject", subject, f"longer than {MAX_SUBJECT_CHARS} characters")
    return HeaderValues(to=to_ascii, sender=sender_out, subject=subject)
