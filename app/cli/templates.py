"""``spillway templates``: list, preview and check the email templates.

Uses the same :class:`app.templating.TemplateStore` as the render stage, so a
preview shows exactly what the stage would send (sandbox and strict variables
included).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from app.cli import EXIT_CODES_HELP, EXIT_INVALID, CliError, load_settings

PARTS = ("subject", "html", "text")


def _store(templates_dir: Path | None) -> Any:
    from app.templating import TemplateConfigError, TemplateStore

    root = templates_dir or load_settings().templates_dir
    try:
        return TemplateStore(root)
    except TemplateConfigError as exc:
        raise CliError(f"templates: {exc}", EXIT_INVALID) from None


templates_dir_option = click.option(
    "--templates-dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Templates folder. Default: SPILLWAY_TEMPLATES_DIR (the repo's templates/).",
)


@click.group(epilog=EXIT_CODES_HELP)
def templates() -> None:
    """List, preview and check the email templates."""


@templates.command("list", epilog=EXIT_CODES_HELP)
@templates_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_(templates_dir: Path | None, as_json: bool) -> None:
    """List the templates with their versions, locales and required variables."""
    store = _store(templates_dir)
    infos = [store.info(name) for name in store.names()]
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "name": i.name,
                        "latest": i.latest,
                        "versions": list(i.versions),
                        "locales": list(i.locales),
                        "required": list(i.required),
                        "description": i.description,
                    }
                    for i in infos
                ],
                indent=2,
            )
        )
        return
    for i in infos:
        versions = ", ".join(f"{v}*" if v == i.latest else v for v in i.versions)
        click.secho(i.name, bold=True, nl=False)
        click.echo(f"  versions: {versions}  locales: {', '.join(i.locales) or '-'}")
        click.echo(f"    required: {', '.join(i.required) or '-'}")
        if i.description:
            click.echo(f"    {i.description}")


@templates.command(epilog=EXIT_CODES_HELP)
@click.argument("name")
@click.option("--version", "version", help="Template version (default: the latest).")
@click.option("--locale", help="Locale, e.g. de-AT (falls back to de, then the default).")
@click.option(
    "--data",
    "data_file",
    type=click.File("r", encoding="utf-8"),
    help="JSON object of template variables ('-' for stdin). Default: the template's sample data.",
)
@click.option(
    "--part",
    type=click.Choice([*PARTS, "all"]),
    default="all",
    show_default=True,
    help="Which part to show.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write to this file instead of the terminal (e.g. --part html --out preview.html).",
)
@templates_dir_option
def preview(
    name: str,
    version: str | None,
    locale: str | None,
    data_file: Any,
    part: str,
    out: Path | None,
    templates_dir: Path | None,
) -> None:
    """Render template NAME with sample (or given) data, as the render stage would.

    \b
    Examples:
      spillway templates preview order_confirmation
      spillway templates preview order_confirmation --version v1 --locale de --part text
      spillway templates preview password_reset --data reset.json --part html --out reset.html
    """
    from app.errors import SpillwayError

    store = _store(templates_dir)
    try:
        if data_file is not None:
            try:
                data = json.load(data_file)
            except ValueError as exc:
                raise CliError(f"--data is not valid JSON: {exc}", EXIT_INVALID) from None
            if not isinstance(data, dict):
                raise CliError("--data must hold a JSON object", EXIT_INVALID)
        else:
            data = store.sample_data(name)
        parts = store.render(name, data, version=version, locale=locale)
    except SpillwayError as exc:
        raise CliError(f"{exc.reason}: {exc}", EXIT_INVALID) from None

    if part == "all":
        text = (
            f"Template: {parts.template} {parts.template_version}"
            f"{f' ({locale})' if locale else ''}\n"
            f"Subject:  {parts.subject}\n\n"
            f"----- text -----\n{parts.text.rstrip()}\n\n"
            f"----- html -----\n{parts.html.rstrip()}\n"
        )
    else:
        text = getattr(parts, part)
        if not text.endswith("\n"):
            text += "\n"
    if out is None:
        click.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
        click.echo(f"wrote {part} of {parts.template} {parts.template_version} to {out}", err=True)


@templates.command(epilog=EXIT_CODES_HELP)
@templates_dir_option
def check(templates_dir: Path | None) -> None:
    """Render every template, version and locale with its sample data; exit 3 on problems.

    Run it before deploying templates: a broken template found here is not a
    stream of dead letters later.
    """
    store = _store(templates_dir)
    problems = store.check()
    names = store.names()
    if problems:
        for p in problems:
            click.secho(f"FAIL {p}", fg="red", err=True)
        raise CliError(f"{len(problems)} problem(s) in {len(names)} templates", EXIT_INVALID)
    click.echo(f"ok: {len(names)} templates ({', '.join(names)})")
