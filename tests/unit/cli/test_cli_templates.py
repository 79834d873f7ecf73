"""``spillway templates``: list, preview (terminal, file, parts, data) and check."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from click.testing import CliRunner

from app.cli import EXIT_INVALID
from app.cli.main import cli
from app.settings import PROJECT_ROOT


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["templates", *args])
    return result.exit_code, result.output


def test_list() -> None:
    code, out = run("list")
    assert code == 0 and "order_confirmation" in out and "v2*" in out
    code, out = run("list", "--json")
    by_name = {t["name"]: t for t in json.loads(out)}
    assert by_name["order_confirmation"]["locales"] == ["de"]


def test_preview_all_parts_with_sample_data() -> None:
    code, out = run("preview", "order_confirmation")
    assert code == 0, out
    assert out.startswith("Template: order_confirmation v2\nSubject:  ")
    assert "----- text -----" in out and "----- html -----" in out
    assert "SO-10482" in out  # from the manifest's sample data


def test_preview_one_part_version_locale_to_file(tmp_path: Path) -> None:
    code, out = run("preview", "order_confirmation", "--version", "v1", "--part", "subject")
    assert code == 0 and out.count("\n") == 1 and "SO-10482" in out
    code, de = run("preview", "order_confirmation", "--locale", "de-AT", "--part", "subject")
    assert code == 0 and de != out
    target = tmp_path / "preview.html"
    code, _ = run("preview", "password_reset", "--part", "html", "--out", str(target))
    assert code == 0 and target.read_text().lstrip().startswith("<")


def test_preview_with_data_file(tmp_path: Path) -> None:
    sample = json.loads((PROJECT_ROOT / "templates/password_reset/template.json").read_text())
    data = sample["sample_data"]
    data["user"]["name"] = "Zed Zebra"
    path = tmp_path / "data.json"
    path.write_text(json.dumps(data))
    code, out = run("preview", "password_reset", "--data", str(path), "--part", "text")
    assert code == 0 and "Zed Zebra" in out


def test_preview_failures_exit_3(tmp_path: Path) -> None:
    code, out = run("preview", "nope")
    assert code == EXIT_INVALID and "unknown template 'nope'" in out
    code, out = run("preview", "order_confirmation", "--version", "v9")
    assert code == EXIT_INVALID and "no version 'v9'" in out
    (tmp_path / "d.json").write_text('{"user": {}}')
    code, out = run("preview", "password_reset", "--data", str(tmp_path / "d.json"))
    assert code == EXIT_INVALID and "missing variable" in out
    (tmp_path / "bad.json").write_text("[1]")
    code, out = run("preview", "password_reset", "--data", str(tmp_path / "bad.json"))
    assert code == EXIT_INVALID and "JSON object" in out


def test_check(tmp_path: Path) -> None:
    code, out = run("check")
    assert code == 0 and out.startswith("ok: 3 templates")
    broken = tmp_path / "templates"
    shutil.copytree(PROJECT_ROOT / "templates", broken)
    (broken / "password_reset/v1/body.txt.j2").write_text("{{ user.name }} {{ nope.x }}")
    code, out = run("check", "--templates-dir", str(broken))
    assert code == EXIT_INVALID and "password_reset" in out
