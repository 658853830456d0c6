"""Runs tests/graph_launch_cases.py in a process of its own (see its docstring: the kernels must be loaded as
Triton's JIT makes them, not as the interpreter does, which the interpreter tests of this process may have done;
and without tests/conftest.py, which imports Triton in interpreter mode on a machine without a GPU: torch's analysis
of a kernel, which some cases run, needs Triton's compiled language)."""
import os
import re
import subprocess
import sys
from pathlib import Path

CASES = Path(__file__).with_name("graph_launch_cases.py")


def test_graph_launch_cases_in_a_fresh_process():
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--noconftest", str(CASES)],
                            capture_output=True, text=True, env=env, cwd=CASES.parent, timeout=600)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    # Every case ran and passed (parametrized ones count once per parameter set): nothing skipped or deselected.
    defined = len(re.findall(r"^def test_", CASES.read_text(), flags=re.M))
    passed = re.match(r"(\d+) passed(, \d+ warnings?)? in ", summary)
    assert passed and int(passed.group(1)) >= defined, summary
