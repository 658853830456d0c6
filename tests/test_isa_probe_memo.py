"""isa_probe_memo.py: Inductor's CPU-ISA probes are remembered across processes when they pass, and only then;
the first process runs them concurrently; the ISA Inductor picks is the one the probes pick."""
import functools
import json
import os
import subprocess
import sys
import threading

import pytest

from glacompiler.compiler import isa_probe_memo
from package_under_test import PACKAGE_PARENT


class FakeISA:
    def __init__(self, name="avx2", flags="-mavx2"):
        self.name, self.flags = name, flags

    def __str__(self):
        return self.name

    def build_arch_flags(self):
        return self.flags


class CountingProbe:
    def __init__(self, verdict=True):
        self.verdict, self.calls = verdict, 0

    def __call__(self, isa, code):
        self.calls += 1
        return self.verdict


@pytest.fixture
def memo_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(isa_probe_memo, "memo_path", lambda: tmp_path / "inductor" / isa_probe_memo.MEMO_FILE)
    isa_probe_memo.forget_loaded_memo()
    yield tmp_path / "inductor" / isa_probe_memo.MEMO_FILE
    isa_probe_memo.forget_loaded_memo()


def test_a_pass_is_remembered_across_processes(memo_dir):
    probe = CountingProbe(True)
    assert isa_probe_memo.remembering(probe)(FakeISA(), "int main() {}") is True
    assert probe.calls == 1 and len(json.loads(memo_dir.read_text())) == 1
    isa_probe_memo.forget_loaded_memo()  # a new process: reads the file
    later = CountingProbe(False)  # would fail if it ran
    assert isa_probe_memo.remembering(later)(FakeISA(), "int main() {}") is True
    assert later.calls == 0


def test_a_failure_is_not_remembered(memo_dir):
    probe = CountingProbe(False)
    check = isa_probe_memo.remembering(probe)
    assert check(FakeISA(), "code") is False
    assert check(FakeISA(), "code") is False
    assert probe.calls == 2 and not memo_dir.exists()


@pytest.mark.parametrize("other", [FakeISA("avx512", "-mavx512f"), FakeISA("avx2", "-mavx2 -mfma")])
def test_another_isa_flags_or_program_probes_again(memo_dir, other):
    isa_probe_memo.remembering(CountingProbe(True))(FakeISA(), "code")
    probe = CountingProbe(False)
    check = isa_probe_memo.remembering(probe)
    assert check(other, "code") is False
    assert check(FakeISA(), "other code") is False
    assert probe.calls == 2


@pytest.mark.parametrize("part, value", [("_compiler_identity", lambda: "g++:/elsewhere/g++:1:2:gcc 99"),
                                         ("_cpu_flags", lambda: "fpu sse2")])
def test_the_key_follows_the_compiler_and_the_cpu(memo_dir, monkeypatch, part, value):
    key = isa_probe_memo.probe_key(FakeISA(), "code")
    assert key is not None  # this machine has a C++ compiler (the suite compiles with Inductor)
    monkeypatch.setattr(isa_probe_memo, part, value)
    assert isa_probe_memo.probe_key(FakeISA(), "code") != key


def test_the_key_follows_the_isa_name_alone(memo_dir):
    assert isa_probe_memo.probe_key(FakeISA("avx2"), "code") != isa_probe_memo.probe_key(FakeISA("avx2_vnni"), "code")


def test_an_unreadable_memo_probes(memo_dir):
    memo_dir.parent.mkdir(parents=True)
    memo_dir.write_text("{not json")
    probe = CountingProbe(True)
    assert isa_probe_memo.remembering(probe)(FakeISA(), "code") is True
    assert probe.calls == 1
    assert len(json.loads(memo_dir.read_text())) == 1  # rewritten whole


def test_a_key_that_cannot_be_read_probes_every_time(memo_dir, monkeypatch):
    def no_compiler():
        raise FileNotFoundError("g++")

    monkeypatch.setattr(isa_probe_memo, "_compiler_identity", no_compiler)
    probe = CountingProbe(True)
    check = isa_probe_memo.remembering(probe)
    assert check(FakeISA(), "code") and check(FakeISA(), "code")
    assert probe.calls == 2 and not memo_dir.exists()


def test_a_memo_of_another_shape_or_an_unwritable_dir_leaves_the_probe_in_charge(memo_dir, tmp_path, monkeypatch):
    memo_dir.parent.mkdir(parents=True)
    memo_dir.write_text("[[1], 2]")  # valid JSON, not a list of keys
    probe = CountingProbe(True)
    assert isa_probe_memo.remembering(probe)(FakeISA(), "code") is True and probe.calls == 1
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setattr(isa_probe_memo, "memo_path", lambda: blocker / "sub" / isa_probe_memo.MEMO_FILE)
    isa_probe_memo.forget_loaded_memo()
    failing = CountingProbe(False)
    assert isa_probe_memo.remembering(failing)(FakeISA(), "code") is False
    assert isa_probe_memo.remembering(probe)(FakeISA(), "code") is True  # written nowhere, no error
    assert list(tmp_path.glob("**/*.tmp")) == []


def test_forget_all_deletes_the_memo(memo_dir):
    isa_probe_memo.remembering(CountingProbe(True))(FakeISA(), "code")
    assert memo_dir.exists()
    isa_probe_memo.forget_all()
    probe = CountingProbe(True)
    isa_probe_memo.remembering(probe)(FakeISA(), "code")
    assert probe.calls == 1


@pytest.fixture
def fresh_install(monkeypatch):
    """check_build replaced by a sentinel and the memo not installed yet (restored afterwards)."""
    from torch._inductor import cpu_vec_isa

    real = cpu_vec_isa.VecISA.check_build

    def sentinel(self, code):  # the real probe: Inductor's process-wide ISA choice stays what it would be
        return real(self, code)

    monkeypatch.setattr(cpu_vec_isa.VecISA, "check_build", sentinel)
    monkeypatch.setattr(isa_probe_memo.PATCH, "tried", False)
    return cpu_vec_isa.VecISA, sentinel


def test_the_backend_installs_the_memo_before_compiling(fresh_install, monkeypatch):
    """...and, for a graph that builds C++ (a CPU graph here), lets the probes run concurrently first."""
    import torch

    import glacompiler
    from glacompiler.compiler import torch_compile_backend

    vec_isa, sentinel = fresh_install
    concurrent_calls = []
    monkeypatch.setattr(torch_compile_backend, "probe_isas_concurrently",
                        lambda patches, builds_cpu_code, wrapper_picks_isa: concurrent_calls.append(
                            (builds_cpu_code, wrapper_picks_isa)))
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: (x * 2).sum(), backend=glacompiler.backend())
    with torch.no_grad():
        compiled(torch.randn(4))
    torch._dynamo.reset()
    assert getattr(vec_isa.check_build, "__wrapped__", None) is sentinel
    assert concurrent_calls == [(True, True)]


def test_the_memo_can_be_turned_off(fresh_install, monkeypatch):
    vec_isa, sentinel = fresh_install
    monkeypatch.setenv("GLACOMPILER_ISA_PROBE_MEMO", "0")
    isa_probe_memo.install()
    assert vec_isa.check_build is sentinel


CHILD = """
import json, sys, threading
from torch._inductor import cpu_vec_isa
calls = {"probes": 0, "passed": 0, "in_flight": 0, "max_in_flight": 0, "probes_in_pick": 0}
lock = threading.Lock()
real = cpu_vec_isa.VecISA.check_build
def counted(self, code):
    with lock:
        calls["probes"] += 1
        calls["in_flight"] += 1
        calls["max_in_flight"] = max(calls["max_in_flight"], calls["in_flight"])
    verdict = real(self, code)
    with lock:
        calls["in_flight"] -= 1
        calls["passed"] += bool(verdict)
    return verdict
cpu_vec_isa.VecISA.check_build = counted  # what the memo wraps: the real probe, counted
from glacompiler.compiler import isa_probe_memo
if sys.argv[1] != "plain":
    isa_probe_memo.install()
    assert cpu_vec_isa.VecISA.check_build is not counted
if sys.argv[1] == "concurrent":
    isa_probe_memo.probe_isas_concurrently({}, True)
before = calls["probes"]
isa = str(cpu_vec_isa.pick_vec_isa())
calls["probes_in_pick"] = calls["probes"] - before
print(json.dumps(dict(calls, isa=isa)))
"""


def run_child(tmp_path, mode: str) -> dict:
    tmp_path.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"), PYTHONPATH=str(PACKAGE_PARENT))
    env.pop("GLACOMPILER_ISA_PROBE_MEMO", None)
    result = subprocess.run([sys.executable, "-c", CHILD, mode], env=env, capture_output=True, text=True,
                            timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_second_process_picks_the_same_isa_without_probing(tmp_path):
    """Inductor's own ISA choice (pick_vec_isa) in three fresh processes sharing a cache dir: without the memo,
    with it (probes, remembers the passes), with it again (only the probes that failed run)."""
    plain = run_child(tmp_path, "plain")
    if sys.platform == "linux" and os.uname().machine == "x86_64":
        assert plain["passed"] >= 1, plain  # an x86-64 Linux host passes at least one probe (AVX2 or better)
    elif plain["passed"] == 0:
        pytest.skip(f"no ISA probe passes on this host ({plain}): nothing to remember")
    first = run_child(tmp_path, "memo")
    second = run_child(tmp_path, "memo")
    assert plain["isa"] == first["isa"] == second["isa"]
    assert first["probes"] == plain["probes"] and first["passed"] == plain["passed"]
    assert second["probes"] == first["probes"] - first["passed"]


@pytest.mark.slow
def test_concurrent_probes_pick_the_same_isa_and_leave_inductor_nothing_to_probe(tmp_path):
    plain = run_child(tmp_path / "plain", "plain")
    concurrent = run_child(tmp_path / "concurrent", "concurrent")
    assert concurrent["isa"] == plain["isa"]
    assert concurrent["probes"] == plain["probes"] and concurrent["passed"] == plain["passed"]
    assert concurrent["probes_in_pick"] == 0  # Inductor found every verdict cached on its ISA objects
    assert plain["max_in_flight"] == 1
    if plain["probes"] > 1 and sys.platform == "linux" and os.uname().machine == "x86_64":
        assert concurrent["max_in_flight"] >= 2, concurrent


class RecordingISA:
    """An ISA object as Inductor's list holds them: truth-testing it probes (here: records the thread and the
    Inductor config that thread sees)."""

    def __init__(self, name, seen, barrier):
        self.name, self.seen, self.barrier = name, seen, barrier

    def __str__(self):
        return self.name

    def __bool__(self):
        from torch._inductor import config

        self.seen.append((threading.get_ident(), config.cpp.simdlen, config.cpp.min_chunk_size))
        self.barrier.wait(timeout=10)  # every probe in flight at once, or a timeout
        return True


@pytest.fixture
def fake_isas(monkeypatch):
    """Inductor's ISA list as three recording objects (the CPU claims two of them), nothing chosen yet, an
    x86-64 Linux host with 4 cores, the memo installed; returns what the probes saw and their barrier."""
    from torch._inductor import cpu_vec_isa

    seen = []
    barrier = threading.Barrier(2)
    isas = [RecordingISA("avx512", seen, barrier), RecordingISA("avx2", seen, barrier),
            RecordingISA("amx_tile", seen, barrier)]
    monkeypatch.setattr(cpu_vec_isa, "supported_vec_isa_list", isas)
    monkeypatch.setattr(cpu_vec_isa, "x86_isa_checker", lambda: ["avx2", "avx512"])
    monkeypatch.setattr(cpu_vec_isa, "valid_vec_isa_list", functools.cache(lambda: []))  # not chosen yet
    monkeypatch.setattr(isa_probe_memo.PATCH, "applied", True)
    monkeypatch.setattr(isa_probe_memo, "_probed_concurrently", False)
    monkeypatch.setattr(isa_probe_memo, "_is_x86_64_linux", lambda: True)
    monkeypatch.setattr(isa_probe_memo.os, "cpu_count", lambda: 4)
    monkeypatch.delenv("TORCHINDUCTOR_FX_COMPILE_MODE", raising=False)
    return seen, barrier


def test_probes_run_one_thread_per_claimed_isa_under_the_graphs_config(fake_isas):
    """The ISAs the CPU claims are truth-tested concurrently, each thread seeing the config the graph compiles
    with: the patches given and the caller's own overrides (torch keeps those in context variables)."""
    from torch._inductor import config

    seen, barrier = fake_isas
    with config.patch({"cpp.min_chunk_size": 7}):
        isa_probe_memo.probe_isas_concurrently({"cpp.simdlen": 256}, builds_cpu_code=True)
    assert len(seen) == 2 and len({thread for thread, _, _ in seen}) == 2 and not barrier.broken
    assert {(simdlen, chunk) for _, simdlen, chunk in seen} == {(256, 7)}


@pytest.mark.parametrize("case", ["no memo", "no C++", "vec_isa_ok set", "subprocess compiles", "chosen already"])
def test_nothing_is_probed_where_inductor_would_not_probe_now(fake_isas, monkeypatch, case):
    from torch._inductor import cpu_vec_isa

    seen, _ = fake_isas
    patches, builds_cpu_code = {}, True
    if case == "no memo":  # opted out, or a torch whose probe we do not know
        monkeypatch.setattr(isa_probe_memo.PATCH, "applied", False)
    elif case == "no C++":
        patches, builds_cpu_code = {"cpp_wrapper": False}, False
    elif case == "vec_isa_ok set":
        patches = {"cpp.vec_isa_ok": True}
    elif case == "subprocess compiles":
        monkeypatch.setenv("TORCHINDUCTOR_FX_COMPILE_MODE", "subprocess")
    else:
        chosen = functools.cache(lambda: [])
        chosen()
        monkeypatch.setattr(cpu_vec_isa, "valid_vec_isa_list", chosen)
    isa_probe_memo.probe_isas_concurrently(patches, builds_cpu_code)
    assert seen == []


def test_the_cpp_wrapper_alone_asks_for_the_probes(fake_isas):
    seen, _ = fake_isas
    isa_probe_memo.probe_isas_concurrently({"cpp_wrapper": True}, builds_cpu_code=False)
    assert len(seen) == 2


@pytest.mark.parametrize("builds_cpu_code", [False, True])
def test_glue_that_picks_no_isa_asks_for_no_probes(fake_isas, builds_cpu_code):
    """A CUDA graph's C++ wrapper built without the host's ISA (glue_wrapper_build.py) needs no probe; CPU code in
    the same graph still does."""
    seen, _ = fake_isas
    isa_probe_memo.probe_isas_concurrently({"cpp_wrapper": True}, builds_cpu_code, wrapper_picks_isa=False)
    assert len(seen) == (2 if builds_cpu_code else 0)
