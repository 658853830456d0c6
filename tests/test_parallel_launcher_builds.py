"""Triton's launcher stubs built side by side before Inductor's loop over a graph's kernels
(glacompiler/compiler/parallel_launcher_builds.py): which compile results get a stub, that the builds overlap and
come before the loop, that failures are left to the loop, when install() wraps; and on a GPU, that a C++-wrapper
compile from empty caches builds every stub on the pool's threads, none in Inductor's loop."""
import threading
from concurrent.futures import Future
from types import SimpleNamespace

import pytest
import torch
from torch._inductor.async_compile import AsyncCompile
from torch._inductor.codecache import LambdaFuture
from torch._inductor.runtime.triton_heuristics import StaticTritonCompileResult, TritonCompileResult

from glacompiler.compiler import parallel_launcher_builds


def compile_result(kind, name: str, launched: bool = False):
    """A compile result as a worker sends it back, without a compiled kernel behind it."""
    result = object.__new__(kind)
    result.kernel = SimpleNamespace(src=f"src of {name}", metadata=f"metadata of {name}",
                                    _run=object() if launched else None)
    return result


def pending_kernel(*results, error: Exception = None) -> LambdaFuture:
    """What Inductor's AsyncCompile.triton puts in the scope: a LambdaFuture over the worker's task, which resolves
    to (CachingAutotuner, compile time in us)."""
    task = Future()
    if error is not None:
        task.set_exception(error)
    else:
        task.set_result((SimpleNamespace(compile_results=list(results)), 1000))
    return LambdaFuture(lambda: task.result()[0], future=task)


@pytest.fixture
def built(monkeypatch):
    """The stubs made_launcher_stub is asked for: (kernel src, thread name), in order."""
    made = []
    monkeypatch.setattr(parallel_launcher_builds, "make_launcher_stub",
                        lambda kernel: made.append((kernel.src, threading.current_thread().name)))
    return made


def test_each_kernel_launched_through_triton_gets_its_stub_before_inductors_loop(built):
    scope = {
        "triton_poi_0": pending_kernel(compile_result(TritonCompileResult, "a"), compile_result(TritonCompileResult, "b")),
        "triton_red_1": pending_kernel(compile_result(StaticTritonCompileResult, "static")),
        "triton_poi_2": pending_kernel(compile_result(TritonCompileResult, "launched", launched=True),
                                       compile_result(TritonCompileResult, "c")),
        "torch": torch, "other": 3,
    }
    seen_by_loop = []
    wait = parallel_launcher_builds.launchers_built_first(lambda self, scope: seen_by_loop.append(list(built)))
    wait(None, scope)
    assert sorted(src for src, _ in built) == ["src of a", "src of b", "src of c"]
    assert all(name.startswith("triton-launcher") for _, name in built), built
    assert len(seen_by_loop) == 1 and sorted(src for src, _ in seen_by_loop[0]) == ["src of a", "src of b", "src of c"]


def test_the_builds_overlap(monkeypatch):
    """Every kernel's stub is under way at once: each build waits until all have started (a barrier that fails
    rather than hangs where they run in turn)."""
    kernels = 4
    monkeypatch.setattr(parallel_launcher_builds.os, "cpu_count", lambda: kernels)
    barrier = threading.Barrier(kernels, timeout=10)
    passed = []

    def build(kernel):
        barrier.wait()
        passed.append(kernel.src)

    monkeypatch.setattr(parallel_launcher_builds, "make_launcher_stub", build)
    scope = {f"k{i}": pending_kernel(compile_result(TritonCompileResult, str(i))) for i in range(kernels)}
    parallel_launcher_builds.launchers_built_first(lambda self, scope: None)(None, scope)
    assert sorted(passed) == [f"src of {i}" for i in range(kernels)]


def test_failures_are_left_to_inductors_loop(monkeypatch, built):
    """A worker's error, or a stub that fails to build, raises nothing here; the loop still runs on the whole
    scope (and meets the worker's error itself)."""
    def build(kernel):
        if kernel.src == "src of bad":
            raise RuntimeError("gcc failed")
        built.append((kernel.src, threading.current_thread().name))

    monkeypatch.setattr(parallel_launcher_builds, "make_launcher_stub", build)
    scope = {"worker_failed": pending_kernel(error=RuntimeError("worker died")),
             "bad": pending_kernel(compile_result(TritonCompileResult, "bad")),
             "good": pending_kernel(compile_result(TritonCompileResult, "good"))}
    loop_saw = []
    parallel_launcher_builds.launchers_built_first(lambda self, scope: loop_saw.append(sorted(scope)))(None, scope)
    assert [src for src, _ in built] == ["src of good"]
    assert loop_saw == [["bad", "good", "worker_failed"]]


def test_a_single_kernel_is_left_to_the_loop(built):
    scope = {"only": pending_kernel(compile_result(TritonCompileResult, "only"))}
    parallel_launcher_builds.launchers_built_first(lambda self, scope: None)(None, scope)
    assert built == []


@pytest.fixture
def fresh_install(monkeypatch):
    """install() as in a new process, with AsyncCompile._wait_futures restored after the test."""
    monkeypatch.setattr(parallel_launcher_builds, "_installed", False)
    monkeypatch.setattr(parallel_launcher_builds, "_wrapped", False)
    monkeypatch.setattr(AsyncCompile, "_wait_futures", AsyncCompile.__dict__["_wait_futures"])
    monkeypatch.delenv("GLACOMPILER_PARALLEL_LAUNCHERS", raising=False)


def test_install_wraps_once(fresh_install):
    torch_wait = AsyncCompile.__dict__["_wait_futures"]
    parallel_launcher_builds.install()
    wrapped = AsyncCompile.__dict__["_wait_futures"]
    assert parallel_launcher_builds.installed() and wrapped is not torch_wait and wrapped.__wrapped__ is torch_wait
    parallel_launcher_builds.install()
    assert AsyncCompile.__dict__["_wait_futures"] is wrapped


def test_install_leaves_an_unknown_wait_and_the_opt_out_alone(fresh_install, monkeypatch):
    def other_wait(self, scope, timeout):
        return None

    monkeypatch.setattr(AsyncCompile, "_wait_futures", other_wait)
    parallel_launcher_builds.install()
    assert AsyncCompile.__dict__["_wait_futures"] is other_wait and not parallel_launcher_builds.installed()
    monkeypatch.setattr(parallel_launcher_builds, "_installed", False)
    monkeypatch.setattr(AsyncCompile, "_wait_futures", AsyncCompile.__dict__["_wait_futures"])
    monkeypatch.setenv("GLACOMPILER_PARALLEL_LAUNCHERS", "0")
    torch_wait = AsyncCompile.__dict__["_wait_futures"]
    parallel_launcher_builds.install()
    assert AsyncCompile.__dict__["_wait_futures"] is torch_wait and not parallel_launcher_builds.installed()


@pytest.mark.gpu
def test_a_cpp_wrapper_compile_builds_every_stub_on_the_pool(cuda_device, monkeypatch, tmp_path):
    """From empty Inductor and Triton caches, the tiny GTA model's plain decode under the backend's defaults
    (the C++ wrapper, no CUDA graphs): the compile's launcher stubs are compiled on the pool's threads, none in
    Inductor's loop, and each step matches the fused-op decode (whose eager launches build stubs of their own,
    outside the compile)."""
    import glacompiler
    from torch._inductor.utils import fresh_inductor_cache
    from triton.runtime import build

    from test_backend_gpu import decode_plain_against_fused

    parallel_launcher_builds.install()
    assert parallel_launcher_builds.installed()
    torch_wait = AsyncCompile.__dict__["_wait_futures"].__wrapped__
    in_loop = threading.Event()

    def flagged_wait(self, scope):
        in_loop.set()
        try:
            return torch_wait(self, scope)
        finally:
            in_loop.clear()

    monkeypatch.setattr(AsyncCompile, "_wait_futures", parallel_launcher_builds.launchers_built_first(flagged_wait))
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    stubs = []
    original_build = build._build

    def recording_build(name, *args, **kwargs):
        if name == "__triton_launcher":
            stubs.append((threading.current_thread().name, in_loop.is_set()))
        return original_build(name, *args, **kwargs)

    monkeypatch.setattr(build, "_build", recording_build)
    with fresh_inductor_cache():
        decode_plain_against_fused("gta-4", glacompiler.backend(), cudagraphs=False)
    on_the_pool = [thread for thread, _ in stubs if thread.startswith("triton-launcher")]
    assert len(on_the_pool) >= 2 and not any(looping for _, looping in stubs), stubs
    assert [r.status for r in glacompiler.compile_report()] == ["rewritten"] * 2
