"""`glacompiler demo` on CPU: compiles the built-in GLA-2 model with backend="gla", decodes, checks against
eager and prints the compile report."""
from glacompiler import cli, demo


def test_demo_runs_and_checks_against_eager(capsys):
    assert cli.main(["demo", "--steps", "3", "--prompt", "20"]) == 0
    printed = capsys.readouterr().out
    assert "compile report:" in printed
    assert f"decode attention runs on: {demo.execution_path(demo.demo_device('auto'))}\n" in printed
    assert printed.count("[rewritten] gla hq=16 hkv=2") == 2  # both layers' decode attention
    assert "greedy tokens identical" in printed and printed.rstrip().endswith("OK")
