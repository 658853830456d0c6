"""The `glacompiler` command as a new user meets it: --version, `python -m glacompiler`, no import back into
the CLI."""
import ast
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

from glacompiler import cli

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "glacompiler"


def run_module(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "glacompiler", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, **kwargs)


def pyproject_version() -> str:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


# ---------------------------------------------------------------------------------------- version, python -m
def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"glacompiler {cli.package_version()}"
    assert cli.package_version().startswith(pyproject_version())


def test_version_of_a_source_checkout_that_is_not_installed(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert cli.package_version() == f"{pyproject_version()} (source checkout, not installed)"


def test_python_m_glacompiler_is_the_glacompiler_command():
    result = run_module("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: glacompiler ")
    assert all(name in result.stdout for name in ("demo", "autotune", "configs", "--version"))


def test_nothing_in_the_package_imports_the_cli():
    """cli imports the subcommands, never the reverse (the entry points __main__ and cli itself excepted)."""
    importers = []
    for path in PACKAGE.rglob("*.py"):
        if path.name in ("cli.py", "__main__.py"):
            continue
        package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.rsplit(".", node.level - 1)[0] if node.level else ""
                module = ".".join(part for part in (base, node.module) if part)
                names = [module] + [f"{module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            if "glacompiler.cli" in names:
                importers.append(str(path.relative_to(ROOT)))
    assert importers == []
