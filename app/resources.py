"""Where the data the workers read is found: the Avro schemas and the default templates.

The repository keeps them at its top, where the design puts them (``schemas/``,
``templates/``). The wheel carries them inside the package, as ``app/schemas`` and
``app/templates`` (pyproject.toml maps the two folders), so an installed product finds
them without the source tree. ``data_path`` returns the packaged folder when there is
one, else the repository's; ``scripts/check-product-install`` loads every schema and
template of an installed wheel.
"""

from __future__ import annotations

from pathlib import Path

#: the folder of the ``app`` package (in the repository, or installed)
APP_DIR = Path(__file__).resolve().parent
#: the folders ``data_path`` knows
DATA = ("schemas", "templates")


def data_path(name: str) -> Path:
    """The folder ``name`` (``schemas`` or ``templates``): ``app/<name>`` of an installed
    wheel, else ``<repository>/<name>`` (a source checkout or an editable install)."""
    if name not in DATA:
        raise ValueError(f"unknown data folder {name!r}; known: {', '.join(DATA)}")
    packaged = APP_DIR / name
    return packaged if packaged.is_dir() else APP_DIR.parent / name
