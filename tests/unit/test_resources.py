"""app/resources.py: the schemas and default templates are found in the installed
package (a wheel's app/schemas, app/templates) and else in the repository."""

from __future__ import annotations

from pathlib import Path

import pytest

from app import resources
from app.serde import SCHEMAS_DIR
from app.settings import PROJECT_ROOT, Settings


def test_in_the_source_tree_the_folders_are_the_repositorys() -> None:
    assert resources.data_path("schemas") == PROJECT_ROOT / "schemas" == SCHEMAS_DIR
    assert resources.data_path("templates") == PROJECT_ROOT / "templates"
    assert Settings().templates_dir == PROJECT_ROOT / "templates"


def test_an_installed_package_uses_its_own_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site-packages"
    (site / "app" / "schemas").mkdir(parents=True)
    (site / "schemas").mkdir()  # another distribution's top-level folder: never used
    monkeypatch.setattr(resources, "APP_DIR", site / "app")
    assert resources.data_path("schemas") == site / "app" / "schemas"
    # no packaged templates: the folder next to the package (a source checkout)
    assert resources.data_path("templates") == site / "templates"


@pytest.mark.parametrize("name", ["", "static", "../schemas", "schemas/", "SCHEMAS"])
def test_only_the_known_folders(name: str) -> None:
    with pytest.raises(ValueError, match="unknown data folder"):
        resources.data_path(name)
