"""The `glacompiler` command as a new user meets it: --version, `python -m glacompiler`, the legend of
`configs show`, quiet exit on a closed pipe, no import back into the CLI, and the license."""
import ast
import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from glacompiler import cli
from glacompiler.tables import table_file as tables
from glacompiler.tuning import command

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "glacompiler"
SHIPPED_TABLE = ROOT / "tuned_configs" / "NVIDIA_H200.json"


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
    result = run_module("demo", "--steps", "0")  # a subcommand's usage error, through the module entry point
    assert result.returncode == 2
    assert "glacompiler demo: error: --steps must be a positive integer, got 0" in result.stderr
    assert "Traceback" not in result.stderr


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


# ------------------------------------------------------------------------------------------- configs show
def test_configs_show_explains_its_columns(capsys):
    assert cli.main(["configs", "show", str(SHIPPED_TABLE)]) == 0
    lines = capsys.readouterr().out.splitlines()
    legend = lines.index("  columns:")
    header = next(i for i, line in enumerate(lines) if line.split()[:4] == ["family", "spec", "BxSxLq", "config"])
    assert legend < header  # read before the rows (`configs show | head`)
    text = "\n".join(lines[legend:header])
    for term in ("block_m", "block_n", "block_d", "dv_split", "num_splits", "num_warps", "num_stages", "preload_q",
                 "batch x cache length", "query tokens", "heuristic", "speed-up: default / tuned"):
        assert term in text, term
    rows = "\n".join(lines[header:])  # the labels the legend explains, for both families
    assert re.search(r" m\d+ n\d+ d\d+ dv/\d+ s\d+ w\d+ st\d+( pq)? ", rows) and "num_splits=" in rows


def test_configs_show_takes_part_of_a_gpu_name(tmp_path, monkeypatch, capsys):
    """`configs show h100` finds 'NVIDIA H100 80GB HBM3' (a newcomer typed the short name and got "no table"); a
    name no table holds fails naming the tables there are."""
    monkeypatch.setenv("GLACOMPILER_CACHE_DIR", str(tmp_path))  # (no user tables)
    assert cli.main(["configs", "show", "h100"]) == 0
    output = capsys.readouterr().out
    assert output.splitlines()[0].endswith("NVIDIA_H100_80GB_HBM3.json") and "gpu NVIDIA H100 80GB HBM3" in output
    assert "NVIDIA_H200.json" not in output
    assert cli.main(["configs", "show", "H200"]) == 0
    assert "gpu NVIDIA H200;" in capsys.readouterr().out
    assert cli.main(["configs", "show", "B200"]) == 1
    error = capsys.readouterr().err
    assert "no table for 'B200'" in error and "'NVIDIA H100 80GB HBM3'" in error and "'NVIDIA H200'" in error


def long_table(path: Path, copies: int) -> Path:
    """The shipped table with its entries repeated over other batch sizes: output far beyond a pipe's buffer,
    so the command is still writing when the reader goes away."""
    data = json.loads(SHIPPED_TABLE.read_text())
    data["entries"] = [{**entry, "bucket": {**entry["bucket"], "batch": entry["bucket"]["batch"] + 1000 * copy}}
                       for copy in range(copies) for entry in data["entries"]]
    path.write_text(json.dumps(data))
    assert len(command.format_table(tables.read_table(path), path)) > 1 << 18
    return path


def test_closed_pipe_ends_quietly(tmp_path):
    """`glacompiler configs show | head -1`: no BrokenPipeError traceback, the status a shell gives SIGPIPE."""
    table = long_table(tmp_path / "long.json", copies=12)
    process = subprocess.Popen([sys.executable, "-m", "glacompiler", "configs", "show", str(table)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first_line = process.stdout.readline()
    process.stdout.close()
    error = process.stderr.read()
    assert process.wait(timeout=300) == cli.EXIT_BROKEN_PIPE
    assert first_line.strip() == str(table)
    assert error == ""


# ------------------------------------------------------------------------------------------------- license
def test_license_file_and_metadata():
    tomllib = pytest.importorskip("tomllib")
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.startswith("BSD 3-Clause License\n")
    assert "Copyright (c) 2026, the glacompiler authors" in license_text
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "BSD-3-Clause"
    assert project["license-files"] == ["LICENSE"]
