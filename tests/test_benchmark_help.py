"""Every script of benchmarks/ answers --help with its usage and runs nothing: device time is scarce, and a script
that took `--help` (or a mistyped flag) as a start spent it. Every file there is a script but the modules the
scripts import, named here: a new script without argument parsing fails this test."""
import pathlib
import subprocess
import sys

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"
MODULES = {"decode_grid.py", "host_yardstick.py", "inductor_settings.py"}
SCRIPTS = sorted(path.name for path in BENCHMARKS.glob("*.py") if path.name not in MODULES)


def test_the_modules_are_imported_by_scripts():
    sources = "".join((BENCHMARKS / script).read_text() for script in SCRIPTS)
    for module in MODULES:
        assert (BENCHMARKS / module).exists() and f"from {module[:-3]} import" in sources, module


@pytest.mark.slow  # a process that imports torch, per script
@pytest.mark.parametrize("script", SCRIPTS)
def test_a_benchmark_script_answers_help(script):
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), "--help"], capture_output=True, text=True,
                            cwd=BENCHMARKS.parent, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage: " + script), result.stdout[:300]
