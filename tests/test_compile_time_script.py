"""benchmarks/compile_time.py's --inductor-config: refused before any run when it is not a setting of the right type,
and handed to every child run (the child applies it around its compile and reports it; the runs themselves take a
minute each on CPU, so the child's command line is checked with subprocess.run stood in for)."""
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


@pytest.mark.parametrize("items", [[], ["cpp_cache_precompile_headers=False", "freezing=True"]])
def test_child_runs_get_the_settings(monkeypatch, tmp_path, items):
    seen = []

    def fake_run(command, env, capture_output, text):
        seen.append(command)
        return SimpleNamespace(returncode=0, stdout=json.dumps({"first_step_s": 1.0}) + "\n", stderr="")

    monkeypatch.setattr(compile_time.subprocess, "run", fake_run)
    args = SimpleNamespace(shared_headers=True, cpp_wrapper="auto", layers=1, batch=2, prompt=24, cache=64, profile=0,
                           phases=5, tiny=True, inductor_config=items, profile_dump=None)
    assert compile_time.run_child(args, "gla", str(tmp_path)) == {"first_step_s": 1.0}
    command = seen[0]
    given = command[command.index("--inductor-config") + 1:] if items else []
    assert given == items and ("--inductor-config" in command) == bool(items)


def test_profile_dumps_go_to_one_file_a_run(monkeypatch, tmp_path):
    """--profile-dump DIR: each child writes its first step's raw stats to DIR/<backend>_<cold|warm>.prof (a run's
    own file: a warm run must not overwrite the cold run's profile)."""
    seen = []

    def fake_run(command, env, capture_output, text):
        seen.append(command)
        return SimpleNamespace(returncode=0, stdout=json.dumps({"first_step_s": 1.0}) + "\n", stderr="")

    monkeypatch.setattr(compile_time.subprocess, "run", fake_run)
    args = SimpleNamespace(shared_headers=True, cpp_wrapper="auto", layers=1, batch=2, prompt=24, cache=64, profile=0,
                           phases=5, tiny=True, inductor_config=[], profile_dump=str(tmp_path / "prof"))
    compile_time.run_child(args, "gla", str(tmp_path))
    compile_time.run_child(args, "gla", str(tmp_path), "warm")
    args.profile_dump = None
    compile_time.run_child(args, "gla", str(tmp_path))
    files = [command[command.index("--profile-file") + 1] if "--profile-file" in command else None
             for command in seen]
    assert files == [str(tmp_path / "prof" / "gla_cold.prof"), str(tmp_path / "prof" / "gla_warm.prof"), None]
