"""`glacompiler demo` on CPU: compiles the built-in GLA-2 model with backend="gla", decodes, checks against
eager and prints the compile report."""
import re

import pytest

from glacompiler import cli

pytestmark = pytest.mark.slow  # whole models, subprocesses or wheel builds


def test_demo_runs_and_checks_against_eager(capsys):
    assert cli.main(["demo", "--steps", "3", "--prompt", "20"]) == 0
    printed = capsys.readouterr().out
    assert "compile report:" in printed
    assert "decode attention runs on: PyTorch's CPU attention (set TRITON_INTERPRET=1" in printed  # no TRITON_INTERPRET here
    rewritten_gla = re.findall(r"^rewritten +gla +16/2 ", printed, flags=re.MULTILINE)
    assert len(rewritten_gla) == 2  # both layers' decode attention
    assert re.search(r"^\d+ attention sites: 2 rewritten, \d+ skipped$", printed, flags=re.MULTILINE)
    assert "greedy tokens identical" in printed and printed.rstrip().endswith("OK")
