"""Every script of benchmarks/ answers --help with its usage and runs nothing: device time is scarce, and a script
that took `--help` (or a mistyped flag) as a start spent it. Scripts are the files that parse arguments."""
import pathlib
import subprocess
import sys

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(path.name for path in BENCHMARKS.glob("*.py") if "parse_args(" in path.read_text())


def test_the_scripts_are_found():
    assert {"bench_decode.py", "host_ab.py", "host_profile.py", "lazy_rescale_probe.py"} <= set(SCRIPTS)


@pytest.mark.slow  # a process that imports torch, per script
@pytest.mark.parametrize("script", SCRIPTS)
def test_a_benchmark_script_answers_help(script):
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), "--help"], capture_output=True, text=True,
                            cwd=BENCHMARKS.parent, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage: " + script), result.stdout[:300]
