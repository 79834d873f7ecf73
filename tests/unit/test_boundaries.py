"""Issue 16's boundaries, checked on the source: no module outside app/topology.py
names a topic, and no module of the product outside app/faust_adapter.py reaches into
another object's private attributes (Faust's above all: their use is pinned in one
place, tests/unit/test_faust_adapter.py)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from app.settings import PROJECT_ROOT
from app.topology import TOPICS

#: private attributes read outside the adapter on purpose: (module, attribute) -> why.
#: (GaplessConsumer, app/consumer.py, overrides Faust's ``_new_offset`` and calls
#: ``super()``'s: a subclass's own business, pinned by tests/unit/test_faust_adapter.py.)
PRIVATE_ALLOWED = {
    ("app/agents/guard.py", "_exit"): "os._exit: leave without acking (stdlib, public use)",
    ("app/agents/delivery.py", "_exit"): "os._exit, as in the guard",
    ("app/metrics.py", "_selector"): "asyncio's loop selector, timed by LoopMonitor (not Faust)",
    ("app/metrics.py", "_busy"): "the module's own Metrics object",
    ("app/stages/route.py", "_schema_id"): "app.serde's own helper",
}


def modules(*folders: str) -> Iterator[tuple[str, ast.Module]]:
    for folder in folders:
        for path in sorted((PROJECT_ROOT / folder).rglob("*.py")):
            rel = path.relative_to(PROJECT_ROOT).as_posix()
            yield rel, ast.parse(path.read_text(), filename=rel)


def docstrings(tree: ast.Module) -> set[int]:
    kinds = (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, kinds) and node.body and isinstance(node.body[0], ast.Expr)
    }


def names_a_topic(text: str, names: set[str]) -> bool:
    """``email.sent``, ``email.raw-events.critical`` or a fragment that builds one
    (``email.dispatch.`` + lane); prose that mentions one (``email.sent holds``) does not."""
    if text in names or any(text.startswith(n + ".") for n in names):
        return True
    return text.endswith(".") and any(n.startswith(text) for n in names)


def test_no_module_outside_the_topology_names_a_topic() -> None:
    names = {kafka for kafka, _ in TOPICS.values()}
    found = []
    for rel, tree in modules("app", "harness", "bench", "simulator"):
        if rel == "app/topology.py":
            continue
        skip = docstrings(tree)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
                continue
            if id(node) not in skip and names_a_topic(node.value, names):
                found.append(f"{rel}:{node.lineno}: {node.value!r}")
    assert found == []


def test_the_topic_scan_sees_names_and_fragments() -> None:
    names = {"email.sent", "email.dispatch.bulk"}
    assert names_a_topic("email.sent", names) and names_a_topic("email.dispatch.", names)
    assert names_a_topic("email.sent.x", names)
    assert not names_a_topic("email.sent holds 3 records", names)
    assert not names_a_topic("email.*", names) and not names_a_topic("", names)


def private_uses(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """Attributes ``x._name`` (x not self, cls or super()) and ``getattr(x, "_name")``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            attr, owner = node.attr, node.value
            if not attr.startswith("_") or attr.startswith("__"):
                continue
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            if isinstance(owner, ast.Call) and getattr(owner.func, "id", "") == "super":
                continue
            yield node.lineno, attr
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") in (
            "getattr", "setattr", "hasattr", "delattr",
        ):  # fmt: skip
            if len(node.args) < 2 or getattr(node.args[0], "id", "") in ("self", "cls"):
                continue
            name = getattr(node.args[1], "value", None)
            if isinstance(name, str) and name.startswith("_") and not name.startswith("__"):
                yield node.lineno, name


def test_no_product_module_outside_the_adapter_touches_a_private() -> None:
    found, used = [], set()
    for rel, tree in modules("app"):
        if rel == "app/faust_adapter.py":
            continue
        for line, attr in private_uses(tree):
            if (rel, attr) in PRIVATE_ALLOWED:
                used.add((rel, attr))
            else:
                found.append(f"{rel}:{line}: {attr}")
    assert found == []
    assert used == set(PRIVATE_ALLOWED), "an allowed use is gone: remove it from the list"


def test_the_private_scan_sees_each_form(tmp_path: Path) -> None:
    source = """
x = consumer._thread
y = getattr(app, "_conductor", None)
z = self._own
w = super()._new_offset(tp)
v = obj.__dict__
u = hasattr(self, "_gaps")
"""
    assert sorted(private_uses(ast.parse(source))) == [(2, "_thread"), (3, "_conductor")]
