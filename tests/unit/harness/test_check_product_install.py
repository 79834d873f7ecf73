"""scripts/check-product-install: the import check names the product module that imports the
harness, and the dependency check sees an installed harness-only distribution."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from types import ModuleType

from app.settings import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "scripts" / "check-product-install"


def load_script() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("check_product_install", str(SCRIPT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def imports_only(cwd: Path, package: str, *forbid: str) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, str(SCRIPT), "--imports-only", package]
    for name in forbid:
        args += ["--forbid", name]
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_a_product_module_that_imports_the_harness_is_named_with_its_line(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "prod/__init__.py": "",
            "prod/clean.py": "import json\n",
            "prod/sub/__init__.py": "",
            "prod/sub/leaky.py": """\
                import os

                from harn.tools import helper  # the offence, line 3
                """,
            "harn/__init__.py": "",
            "harn/tools.py": "def helper() -> None: ...\n",
        },
    )
    done = imports_only(tmp_path, "prod", "harn")
    assert done.returncode == 1, done.stdout + done.stderr
    fails = [line for line in done.stdout.splitlines() if line.startswith("FAIL")]
    # harn and harn.tools: both imports come from the same line
    assert fails == [
        f"FAIL: prod.sub.leaky ({tmp_path}/prod/sub/leaky.py:3) imports harn",
        f"FAIL: prod.sub.leaky ({tmp_path}/prod/sub/leaky.py:3) imports harn.tools",
    ]


def test_a_product_module_that_imports_a_missing_dependency_fails(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "prod/__init__.py": "",
            "prod/smtp.py": "import spillway_no_such_module_xyz\n",
        },
    )
    done = imports_only(tmp_path, "prod", "harn")
    assert done.returncode == 1
    assert "FAIL: prod.smtp does not import: ModuleNotFoundError" in done.stdout


def test_a_lazy_import_inside_a_function_is_not_an_import_time_dependency(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "prod/__init__.py": "def later():\n    import harn\n",
            "harn/__init__.py": "",
        },
    )
    done = imports_only(tmp_path, "prod", "harn")
    assert (done.returncode, done.stdout) == (0, "")


def test_the_real_product_imports_neither_harness_nor_simulator(tmp_path: Path) -> None:
    # harness/ and simulator/ are importable here (dev install): only the tracer stands
    # between an offending import and a pass
    done = imports_only(PROJECT_ROOT, "app")
    assert (done.returncode, done.stdout) == (0, ""), done.stdout + done.stderr[-2000:]


def test_harness_only_lists_the_group_minus_the_product_dependencies() -> None:
    script = load_script()
    real = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    assert script.harness_only(real) == ["aiosmtpd"]
    fake = {
        "project": {
            "dependencies": ["aiohttp==3.14.5", "Confluent_Kafka[avro]==2.16.1"],
            "optional-dependencies": {
                "harness": ["aiohttp>=3", "confluent-kafka", "AioSMTPD==1.4.6 ; python_version>'3'"]
            },
        }
    }
    assert script.harness_only(fake) == ["aiosmtpd"]
    assert script.harness_only({"project": {"dependencies": []}}) == []


def test_present_sees_an_installed_distribution() -> None:
    script = load_script()
    # the dev install has the harness group (dev includes it): the check would fail here
    assert script.present(["aiosmtpd", "spillway-no-such-dist"]) == ["aiosmtpd"]
    assert script.present([]) == []
