"""The test tree's layout (issue 16 point 8): fixtures and helpers live in ``tests/plugins/``;
no module of the test tree imports another one outside it.

A test module that imports another test module runs that module's tests' imports and
fixtures twice, hides which fixtures a test uses, and breaks when the other module is
renamed. Helpers shared by two modules belong in a plugin.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent

#: modules still allowed to import a test module, each with the reason (none left: add
#: one only for a module edited in parallel, and remove it as soon as it imports from
#: ``tests.plugins`` instead).
ALLOWED: dict[str, str] = {}


def _module_of(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def forbidden_imports(root: Path) -> dict[str, list[str]]:
    """For each module under ``root`` (a ``tests`` directory, plugins included), the
    test-tree modules it imports from outside ``<root>.plugins``: absolute (``tests.x``),
    relative (``.x``) and bare sibling imports (``from sim_helpers import ...``, which
    pytest's rootdir-style import allows), at any depth (inside functions too)."""
    package = root.name
    allowed_prefix = f"{package}.plugins"
    found: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        siblings = {p.stem for p in path.parent.glob("*.py")} - {"__init__"}
        module = _module_of(path, root)
        here = module.split(".")[:-1] if path.name != "__init__.py" else module.split(".")
        bad: list[str] = []
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here[: len(here) - (node.level - 1)]
                    names = [".".join([*base, *([node.module] if node.module else [])])]
                else:
                    names = [node.module or ""]
            for name in names:
                top = name.split(".")[0]
                if top in siblings and top != package:
                    name = ".".join([*here, name])  # a bare sibling import
                elif top != package:
                    continue
                if name == allowed_prefix or name.startswith(allowed_prefix + "."):
                    continue
                bad.append(name)
        if bad:
            found[rel] = sorted(set(bad))
    return found


def test_no_test_module_imports_another() -> None:
    found = {k: v for k, v in forbidden_imports(TESTS).items() if k not in ALLOWED}
    assert found == {}, f"move these helpers into tests/plugins/: {found}"


def test_allowlisted_modules_exist() -> None:
    for rel in ALLOWED:
        assert (TESTS / rel).is_file(), f"{rel} is allowlisted but gone: drop the entry"


def test_the_scan_finds_each_kind_of_import(tmp_path: Path) -> None:
    root = tmp_path / "tests"
    (root / "plugins").mkdir(parents=True)
    (root / "unit").mkdir()
    for d in (root, root / "plugins", root / "unit"):
        (d / "__init__.py").write_text("")
    (root / "plugins" / "good.py").write_text("from app.models import RawEvent\n")
    (root / "plugins" / "leaky.py").write_text("from tests.unit.test_a import x\n")
    (root / "unit" / "helpers.py").write_text("X = 1\n")
    (root / "unit" / "test_ok.py").write_text(
        "import os\nfrom tests.plugins.good import RawEvent\nimport tests.plugins.good\n"
    )
    (root / "unit" / "test_abs.py").write_text("from tests.unit.test_ok import os\n")
    (root / "unit" / "test_dotted.py").write_text("import tests.unit.helpers\n")
    (root / "unit" / "test_rel.py").write_text("from .helpers import X\n")
    (root / "unit" / "test_rel_pkg.py").write_text("from . import helpers\n")
    (root / "unit" / "test_bare.py").write_text("from helpers import X\n")
    (root / "unit" / "test_fn.py").write_text("def f():\n    from tests.unit import helpers\n")
    assert forbidden_imports(root) == {
        "plugins/leaky.py": ["tests.unit.test_a"],
        "unit/test_abs.py": ["tests.unit.test_ok"],
        "unit/test_dotted.py": ["tests.unit.helpers"],
        "unit/test_rel.py": ["tests.unit.helpers"],
        "unit/test_rel_pkg.py": ["tests.unit"],
        "unit/test_bare.py": ["tests.unit.helpers"],
        "unit/test_fn.py": ["tests.unit"],
    }


def _fixtures_in(path: Path) -> list[tuple[str, bool]]:
    """(name, autouse) of every ``@pytest.fixture`` function defined in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for deco in node.decorator_list:
            call = deco if isinstance(deco, ast.Call) else None
            target = call.func if call else deco
            if ast.unparse(target) in ("pytest.fixture", "fixture"):
                autouse = any(
                    k.arg == "autouse" and isinstance(k.value, ast.Constant) and k.value.value
                    for k in (call.keywords if call else [])
                )
                found.append((node.name, autouse))
    return found


def test_shared_fixtures_live_in_plugins() -> None:
    """A conftest below tests/ may only hold autouse fixtures (they apply to its folder,
    which is why they are there); every other shared fixture is in a plugin."""
    found = {
        path.relative_to(TESTS).as_posix(): [n for n, autouse in _fixtures_in(path) if not autouse]
        for path in TESTS.rglob("conftest.py")
        if path.parent != TESTS
    }
    assert {k: v for k, v in found.items() if v} == {}


def test_every_plugin_with_fixtures_is_registered() -> None:
    tree = ast.parse((TESTS / "conftest.py").read_text())
    [listed] = [
        n.value for n in tree.body
        if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "pytest_plugins"
    ]  # fmt: skip
    registered = set(ast.literal_eval(listed))
    for path in sorted((TESTS / "plugins").glob("*.py")):
        if path.name != "__init__.py" and _fixtures_in(path):
            assert f"tests.plugins.{path.stem}" in registered, f"register {path.name}"
