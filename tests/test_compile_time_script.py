"""benchmarks/compile_time.py's --inductor-config: refused before any run when it is not a setting of the right type,
and handed to every child run (the child applies it around its compile and reports it; the runs themselves take a
minute each on CPU, so the child's command line is checked with subprocess.run stood in for); --profile-dump's file
for each run."""
import json
import pathlib
import subprocess
import sys
from types import SimpleNamespace

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import compile_time  # noqa: E402  (a script beside the benchmarks)


def test_a_bad_setting_is_refused_before_any_run():
    result = subprocess.run([sys.executable, str(BENCHMARKS / "compile_time.py"), "--tiny", "--inductor-config",
                             "cpp_cache_precompile_headers=1"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "cpp_cache_precompile_headers takes a bool" in result.stderr, result.stderr
    assert "first step" not in result.stdout


@pytest.fixture
def child_commands(monkeypatch) -> list:
    """The command line of each child run_child starts (subprocess.run stood in for: each answers one first step)."""
    seen = []

    def fake_run(command, env, capture_output, text):
        seen.append(command)
        return SimpleNamespace(returncode=0, stdout=json.dumps({"first_step_s": 1.0}) + "\n", stderr="")

    monkeypatch.setattr(compile_time.subprocess, "run", fake_run)
    return seen


def child_args(**given) -> SimpleNamespace:
    """The parsed options run_child reads: the tiny model's, with `given` over them."""
    return SimpleNamespace(**{**dict(shared_headers=True, cpp_wrapper="auto", layers=1, batch=2, prompt=24, cache=64,
                                     profile=0, phases=5, tiny=True, inductor_config=[], profile_dump=None), **given})


@pytest.mark.parametrize("items", [[], ["cpp_cache_precompile_headers=False", "freezing=True"]])
def test_child_runs_get_the_settings(child_commands, tmp_path, items):
    assert compile_time.run_child(child_args(inductor_config=items), "gla", str(tmp_path)) == {"first_step_s": 1.0}
    command = child_commands[0]
    given = command[command.index("--inductor-config") + 1:] if items else []
    assert given == items and ("--inductor-config" in command) == bool(items)


def test_profile_dumps_go_to_one_file_a_run(child_commands, tmp_path):
    """--profile-dump DIR: each child writes its first step's raw stats to DIR/<backend>_<cold|warm>.prof (a run's
    own file: a warm run must not overwrite the cold run's profile)."""
    dumping = child_args(profile_dump=str(tmp_path / "prof"))
    compile_time.run_child(dumping, "gla", str(tmp_path))
    compile_time.run_child(dumping, "gla", str(tmp_path), "warm")
    compile_time.run_child(child_args(), "gla", str(tmp_path))
    files = [command[command.index("--profile-file") + 1] if "--profile-file" in command else None
             for command in child_commands]
    assert files == [str(tmp_path / "prof" / "gla_cold.prof"), str(tmp_path / "prof" / "gla_warm.prof"), None]


@pytest.mark.parametrize("given, primes", [(dict(tiny=False), True),
                                           (dict(tiny=False, shared_headers=False), False),
                                           (dict(tiny=True), False),
                                           (dict(tiny=False, cpp_wrapper="off"), False),
                                           (dict(tiny=False, backends="default"), False)])
def test_shared_headers_are_built_before_the_timed_runs(given, primes):
    """--shared-headers on the GPU: a child builds the header gla's C++ wrapper asks for before any timed run (on a
    fresh machine the first gla run would build it otherwise); not where no run builds that wrapper."""
    command = compile_time.primer_command(child_args(**{"backends": "default,gla", **given}))
    assert (command is not None) == primes
    if primes:
        assert command[1:] == [str(BENCHMARKS / "compile_time.py"), "--prime-header"]


def test_the_primer_child_asks_for_the_glue_header(monkeypatch):
    """The primer makes the header as the backend does ahead of a graph (glue flags installed first) and waits."""
    import torch

    from glacompiler.compiler import glue_wrapper_build, wrapper_header_prewarm

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(glue_wrapper_build, "install", lambda: calls.append("glue flags"))

    class Joined:
        def join(self):
            calls.append("waited")

    monkeypatch.setattr(wrapper_header_prewarm, "start",
                        lambda patches, device: calls.append((patches, device)) or Joined())
    compile_time.prime_header()
    assert calls == ["glue flags", ({"cpp_wrapper": True}, "cuda"), "waited"]


@pytest.mark.parametrize("cold_only", [False, True])
def test_cold_only_skips_the_warm_runs(monkeypatch, capsys, cold_only):
    """--cold-only: one child a backend (cold), and the summary says the warm run was not made."""
    runs = []
    row = {"first_step_s": 2.0, "inductor_settings": {}}
    monkeypatch.setattr(compile_time, "run_child", lambda args, backend, cache_dir, run="cold", extra_env=None,
                        label=None: runs.append((backend, run)) or row)
    monkeypatch.setattr(compile_time, "describe", lambda name, row, phases=5: name)
    monkeypatch.setattr(sys, "argv", ["compile_time.py", "--tiny", *(["--cold-only"] if cold_only else [])])
    compile_time.main()
    expected = [("default", "cold"), ("gla", "cold")] if cold_only else \
        [("default", "cold"), ("default", "warm"), ("gla", "cold"), ("gla", "warm")]
    assert runs == expected
    assert ("gla warm: not run" in capsys.readouterr().out) == cold_only


def test_rounds_interleave_the_runs_and_report_medians(monkeypatch, capsys):
    """--rounds 3 with an --env-variant: each round runs default, gla and gla under the variant's environment,
    each round starting one run later; the summary gives each label's median and the cold ratios to default's
    median."""
    runs = []
    first_steps = {"default": [10.0, 11.0, 9.0], "gla": [12.0, 13.0, 12.5], "gla off": [14.0, 17.0, 15.0]}

    def fake_run(args, backend, cache_dir, run="cold", extra_env=None, label=None):
        runs.append((label, backend, extra_env))
        name, round_number = label.rsplit(" round ", 1)
        return {"first_step_s": first_steps[name][int(round_number) - 1], "inductor_settings": {}}

    monkeypatch.setattr(compile_time, "run_child", fake_run)
    monkeypatch.setattr(compile_time, "describe", lambda name, row, phases=5: name)
    monkeypatch.setattr(sys, "argv", ["compile_time.py", "--tiny", "--cold-only", "--rounds", "3",
                                      "--env-variant", "off:GLACOMPILER_PARALLEL_LAUNCHERS=0,A=1"])
    compile_time.main()
    off = {"GLACOMPILER_PARALLEL_LAUNCHERS": "0", "A": "1"}
    planned = [("default", "default", {}), ("gla", "gla", {}), ("gla off", "gla", off)]
    assert runs == [(f"{label} round {n + 1}", backend, env)
                    for n in range(3) for label, backend, env in planned[n:] + planned[:n]]
    out = capsys.readouterr().out
    assert "default          first step median  10.00 s over 3 rounds (10.00, 11.00, 9.00)" in out
    assert "gla cold / default cold: 1.25x" in out and "gla off cold / default cold: 1.50x" in out


def test_a_failed_run_still_prints_the_rounds_so_far(monkeypatch, capsys):
    rows = iter([{"first_step_s": 10.0, "inductor_settings": {}}, {"first_step_s": 12.0, "inductor_settings": {}}])

    def fake_run(args, backend, cache_dir, run="cold", extra_env=None, label=None):
        row = next(rows, None)
        if row is None:
            raise RuntimeError("gla off run failed")
        return row

    monkeypatch.setattr(compile_time, "run_child", fake_run)
    monkeypatch.setattr(compile_time, "describe", lambda name, row, phases=5: name)
    monkeypatch.setattr(sys, "argv", ["compile_time.py", "--tiny", "--cold-only", "--env-variant", "off:X=0"])
    with pytest.raises(RuntimeError, match="gla off run failed"):
        compile_time.main()
    assert "gla cold / default cold: 1.20x" in capsys.readouterr().out


@pytest.mark.parametrize("bad", [["--rounds", "0"], ["--env-variant", "GLACOMPILER_PARALLEL_LAUNCHERS=0"],
                                 ["--env-variant", "off:NAME"], ["--env-variant", "off:=1"],
                                 ["--env-variant", "warm:A=1"], ["--env-variant", "two words:A=1"],
                                 ["--env-variant", "off:A=1", "--env-variant", "off:B=1"],
                                 ["--env-variant", "off:TRITON_CACHE_DIR=/tmp/x"],
                                 ["--env-variant", "off:TMPDIR=/tmp/x"]])
def test_bad_rounds_and_variants_are_refused_before_any_run(monkeypatch, capsys, bad):
    monkeypatch.setattr(compile_time, "run_child", lambda *args, **kwargs: pytest.fail("a run started"))
    monkeypatch.setattr(sys, "argv", ["compile_time.py", "--tiny", *bad])
    with pytest.raises(SystemExit) as exit_code:
        compile_time.main()
    assert exit_code.value.code == 2 and bad[0] in capsys.readouterr().err
