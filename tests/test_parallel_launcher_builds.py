"""Triton's launcher stubs built alongside Inductor's loop over a graph's kernels
(glacompiler/compiler/parallel_launcher_builds.py): which compile results get a stub, that each kernel's result
comes after its own stub (waited for a while at most), that the builds overlap, one a core at most, that one
signature and a kernel in two scopes are built once, that failures are left to the loop and a worker that never
answers does not hold up exit, when install() wraps; and on a GPU, that a
C++-wrapper compile from empty caches builds its stubs on the build threads, none in Inductor's loop."""
import inspect
import threading
import time
from concurrent.futures import Future
from types import SimpleNamespace

import pytest
import torch
from torch._inductor.async_compile import AsyncCompile
from torch._inductor.codecache import LambdaFuture
from torch._inductor.runtime.triton_heuristics import StaticTritonCompileResult, TritonCompileResult

from glacompiler.compiler import parallel_launcher_builds


def compile_result(kind, name: str, launched: bool = False, signature: str = None):
    """A compile result as a worker sends it back, without a compiled kernel behind it (its signature its name's
    unless given)."""
    result = object.__new__(kind)
    result.kernel = SimpleNamespace(src=SimpleNamespace(name=name, signature={0: signature or name}, constants={}),
                                    metadata=SimpleNamespace(), _run=object() if launched else None)
    return result


def pending_kernel(*results, error: Exception = None) -> LambdaFuture:
    """What Inductor's AsyncCompile.triton puts in the scope: a LambdaFuture over the worker's task, which resolves
    to (CachingAutotuner, compile time in us); its result is the autotuner."""
    task = Future()
    if error is not None:
        task.set_exception(error)
    else:
        task.set_result((SimpleNamespace(compile_results=list(results)), 1000))
    return LambdaFuture(lambda: task.result()[0], future=task)


def inductors_loop(scope: dict) -> list:
    """Inductor's loop, as _wait_futures runs it: each pending kernel's result in turn; records (key, the stubs built
    when its result came back, its error)."""
    seen = []
    for key, value in scope.items():
        if isinstance(value, LambdaFuture):
            try:
                value.result()
                seen.append((key, set(built_names), None))
            except Exception as error:
                seen.append((key, set(built_names), str(error)))
    return seen


built_names: list = []


@pytest.fixture
def built(monkeypatch):
    """The stubs make_launcher_stub is asked for: (kernel name, thread name), in order; no driver to prepare."""
    made = []
    built_names.clear()

    def make(kernel):
        made.append((kernel.src.name, threading.current_thread().name))
        built_names.append(kernel.src.name)

    monkeypatch.setattr(parallel_launcher_builds, "make_launcher_stub", make)
    monkeypatch.setattr(parallel_launcher_builds, "prepare_driver", lambda: None)
    return made


def wait_with_the_stubs(scope: dict) -> list:
    """The wrapped _wait_futures over Inductor's loop stood in for; what the loop saw."""
    seen = []
    parallel_launcher_builds.launchers_built_alongside(lambda self, scope: seen.extend(inductors_loop(scope)))(
        None, scope)
    return seen


def test_each_kernels_result_comes_after_its_stubs(built, monkeypatch):
    """Builds that take a while (0.2 s each): each kernel's result still comes back with its stubs built."""
    def slow(kernel):
        threading.Event().wait(0.2)
        built.append((kernel.src.name, threading.current_thread().name))
        built_names.append(kernel.src.name)

    monkeypatch.setattr(parallel_launcher_builds, "make_launcher_stub", slow)
    scope = {
        "triton_poi_0": pending_kernel(compile_result(TritonCompileResult, "a"), compile_result(TritonCompileResult, "b")),
        "triton_red_1": pending_kernel(compile_result(StaticTritonCompileResult, "static")),
        "triton_poi_2": pending_kernel(compile_result(TritonCompileResult, "launched", launched=True),
                                       compile_result(TritonCompileResult, "c")),
        "torch": torch, "other": 3,
    }
    seen = wait_with_the_stubs(scope)
    assert sorted(name for name, _ in built) == ["a", "b", "c"]
    assert all(thread.startswith("triton-launcher") for _, thread in built), built
    assert [key for key, _, _ in seen] == ["triton_poi_0", "triton_red_1", "triton_poi_2"]
    stubs_at = {key: stubs for key, stubs, _ in seen}
    assert {"a", "b"} <= stubs_at["triton_poi_0"] and "c" in stubs_at["triton_poi_2"]


def test_the_builds_overlap(built, monkeypatch):
    """Every kernel's stub is under way at once: each build waits until all have started (a barrier: where they
    ran in turn, it breaks and the test says so)."""
    kernels = 4
    barrier = threading.Barrier(kernels, timeout=10)
    broken = []

    def build(kernel):
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            broken.append(kernel.src.name)
        built.append((kernel.src.name, threading.current_thread().name))

    monkeypatch.setattr(parallel_launcher_builds, "make_launcher_stub", build)
    monkeypatch.setattr(parallel_launcher_builds, "_compiling", threading.BoundedSemaphore(kernels))
    scope = {f"k{i}": pending_kernel(compile_result(TritonCompileResult, str(i))) for i in range(kernels)}
    wait_with_the_stubs(scope)
    assert broken == [], "the builds did not overlap"
    assert sorted(name for name, _ in built) == [str(i) for i in range(kernels)]


def test_kernels_of_one_signature_share_a_build(built):
    scope = {f"k{i}": pending_kernel(compile_result(TritonCompileResult, f"k{i}", signature="same")) for i in range(3)}
    scope["other"] = pending_kernel(compile_result(TritonCompileResult, "other"))
    seen = wait_with_the_stubs(scope)
    assert len(built) == 2 and "other" in {name for name, _ in built}
    assert all(stubs & {"k0", "k1", "k2"} for key, stubs, _ in seen if key != "other"), seen
    # The key is the signature's types in order (and the descriptors): names and constants do not split it.
    kernel = compile_result(TritonCompileResult, "x").kernel
    renamed = compile_result(TritonCompileResult, "y", signature="x").kernel
    renamed.src.constants = {(3,): 128}
    assert parallel_launcher_builds.stub_key(kernel) == parallel_launcher_builds.stub_key(renamed)


def test_failures_are_left_to_inductors_loop(monkeypatch, built):
    """A worker's error, or a stub that fails to build, raises nothing here; the loop meets the worker's error
    itself, with its own traceback, and the other kernels still get their stubs."""
    def build(kernel):
        if kernel.src.name == "bad":
            raise RuntimeError("gcc failed")
        built.append((kernel.src.name, threading.current_thread().name))

    monkeypatch.setattr(parallel_launcher_builds, "make_launcher_stub", build)
    scope = {"worker_failed": pending_kernel(error=RuntimeError("worker died")),
             "bad": pending_kernel(compile_result(TritonCompileResult, "bad")),
             "good": pending_kernel(compile_result(TritonCompileResult, "good"))}
    seen = wait_with_the_stubs(scope)
    assert [name for name, _ in built] == ["good"]
    assert [(key, error) for key, _, error in seen] == [("worker_failed", "worker died"), ("bad", None),
                                                        ("good", None)]


def test_a_result_waits_for_its_build_for_a_while(monkeypatch):
    """A build that ends is waited for; one that does not end in BUILD_WAIT_S (a worker still compiling)
    is not: the result goes on, as Inductor's loop would have."""
    running = Future()
    assert running.set_running_or_notify_cancel()
    order = []
    finisher = threading.Timer(0.2, lambda: (order.append("built"), running.set_result(None)))
    finisher.start()
    assert parallel_launcher_builds._after(running, lambda: order.append("result") or "result")() == "result"
    assert order == ["built", "result"]
    monkeypatch.setattr(parallel_launcher_builds, "BUILD_WAIT_S", 0.2)
    never = Future()
    assert parallel_launcher_builds._after(never, lambda: "result")() == "result" and not never.done()


def test_gcc_runs_are_held_to_the_semaphores_count(built, monkeypatch):
    """However many kernels are pending, at most _compiling's count of stubs build at once; that count is the
    cores this process may run on."""
    assert parallel_launcher_builds._compiling._initial_value == parallel_launcher_builds._cores()
    monkeypatch.setattr(parallel_launcher_builds, "_compiling", threading.BoundedSemaphore(2))
    at_once, most = [], []
    lock = threading.Lock()

    def build(kernel):
        with lock:
            at_once.append(kernel)
            most.append(len(at_once))
        threading.Event().wait(0.05)
        with lock:
            at_once.remove(kernel)
        built.append((kernel.src.name, threading.current_thread().name))

    monkeypatch.setattr(parallel_launcher_builds, "make_launcher_stub", build)
    wait_with_the_stubs({f"k{i}": pending_kernel(compile_result(TritonCompileResult, str(i))) for i in range(6)})
    assert len(built) == 6 and max(most) <= 2, most


def test_a_kernel_in_two_scopes_waits_for_one_build(built):
    """Inductor caches a pending kernel by its source: a second graph's scope may hold the same LambdaFuture. Its
    result waits for the one build it already has."""
    shared = pending_kernel(compile_result(TritonCompileResult, "shared"))
    first = {"shared": shared, "other": pending_kernel(compile_result(TritonCompileResult, "other"))}
    parallel_launcher_builds.build_stubs_alongside(first)
    wrapped = shared.result_fn
    parallel_launcher_builds.build_stubs_alongside(
        {"shared": shared, "third": pending_kernel(compile_result(TritonCompileResult, "third")),
         "fourth": pending_kernel(compile_result(TritonCompileResult, "fourth"))})
    assert shared.result_fn is wrapped
    inductors_loop(first)
    assert sorted(name for name, _ in built if name == "shared") == ["shared"]


def test_a_worker_that_never_answers_does_not_hold_up_exit(tmp_path):
    """A compile whose worker never answers (torch 2.13's worker timeout then fails the compile): the process
    still exits at once (the build threads are daemons, and wait for the worker a while at most)."""
    import subprocess
    import sys
    import time

    script = tmp_path / "never_answers.py"
    script.write_text(
        "from concurrent.futures import Future\n"
        "from torch._inductor.codecache import LambdaFuture\n"
        "from glacompiler.compiler import parallel_launcher_builds\n"
        "parallel_launcher_builds.prepare_driver = lambda: None\n"
        "never = [LambdaFuture(lambda: None, future=Future()) for _ in range(2)]\n"
        "parallel_launcher_builds.build_stubs_alongside({'a': never[0], 'b': never[1]})\n"
        "print('compiled around it')\n")
    started = time.perf_counter()
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "compiled around it" in result.stdout, result.stderr[-2000:]
    assert time.perf_counter() - started < parallel_launcher_builds.BUILD_WAIT_S / 2  # (imports included)


def test_a_single_kernel_is_left_to_the_loop(built):
    wait_with_the_stubs({"only": pending_kernel(compile_result(TritonCompileResult, "only"))})
    assert built == []


@pytest.fixture
def fresh_install(monkeypatch):
    """install() as in a new process (torch's own _wait_futures, even where the backend wrapped it already), with
    AsyncCompile._wait_futures restored after the test; a Triton that compiles stubs."""
    monkeypatch.setattr(parallel_launcher_builds.PATCH, "tried", False)
    monkeypatch.setattr(parallel_launcher_builds.PATCH, "applied", False)
    monkeypatch.setattr(AsyncCompile, "_wait_futures", inspect.unwrap(AsyncCompile.__dict__["_wait_futures"]))
    monkeypatch.setattr(parallel_launcher_builds, "triton_compiles_launcher_stubs", lambda: True)
    monkeypatch.delenv("GLACOMPILER_PARALLEL_LAUNCHERS", raising=False)


def test_install_wraps_once(fresh_install):
    torch_wait = AsyncCompile.__dict__["_wait_futures"]
    parallel_launcher_builds.install()
    wrapped = AsyncCompile.__dict__["_wait_futures"]
    assert parallel_launcher_builds.installed() and wrapped is not torch_wait and wrapped.__wrapped__ is torch_wait
    parallel_launcher_builds.install()
    assert AsyncCompile.__dict__["_wait_futures"] is wrapped


def test_install_leaves_torch_alone_where_it_cannot_help(fresh_install, monkeypatch):
    """An unknown wait, a Triton without per-signature stubs (3.9's generic launcher), the opt-out."""
    def other_wait(self, scope, timeout):
        return None

    monkeypatch.setattr(AsyncCompile, "_wait_futures", other_wait)
    parallel_launcher_builds.install()
    assert AsyncCompile.__dict__["_wait_futures"] is other_wait and not parallel_launcher_builds.installed()
    torch_wait = inspect.unwrap(AsyncCompile.__dict__["_wait_futures"])
    for refusal in ("no stubs", "opt-out"):
        monkeypatch.setattr(parallel_launcher_builds.PATCH, "tried", False)
        monkeypatch.setattr(AsyncCompile, "_wait_futures", torch_wait)
        if refusal == "no stubs":
            monkeypatch.setattr(parallel_launcher_builds, "triton_compiles_launcher_stubs", lambda: False)
        else:
            monkeypatch.setattr(parallel_launcher_builds, "triton_compiles_launcher_stubs", lambda: True)
            monkeypatch.setenv("GLACOMPILER_PARALLEL_LAUNCHERS", "0")
        parallel_launcher_builds.install()
        assert AsyncCompile.__dict__["_wait_futures"] is torch_wait and not parallel_launcher_builds.installed()


def test_triton_stubs_are_known_by_the_nvidia_driver(monkeypatch):
    """3.6's driver module has make_launcher (the per-signature source); 3.9's does not."""
    nvidia_driver = pytest.importorskip("triton.backends.nvidia.driver")

    has = callable(getattr(nvidia_driver, "make_launcher", None))
    assert parallel_launcher_builds.triton_compiles_launcher_stubs() == has
    monkeypatch.setattr(nvidia_driver, "make_launcher", lambda constants, signature, tensordesc_meta: "", raising=False)
    assert parallel_launcher_builds.triton_compiles_launcher_stubs()


def wait_for_compile_workers(timeout_s: float = 120.0) -> None:
    """Until Inductor's compile workers answer: before that Inductor compiles and loads each kernel in the calling
    process (AsyncCompile.use_process_pool), its stubs built there, outside the loop. The workers start on first use
    and, beside a loaded suite's other processes, may not answer by a compile's start (a whole-suite run on an H100
    failed the test below that way: every stub built on the main thread, none in the loop)."""
    from torch._inductor.async_compile import get_compile_threads

    threads = get_compile_threads()
    assert threads > 1, f"Inductor compiles in the calling process here ({threads} compile thread): no workers"
    deadline = time.monotonic() + timeout_s
    while not AsyncCompile.use_process_pool():
        assert time.monotonic() < deadline, "Inductor's compile workers never answered"
        time.sleep(0.1)


@pytest.mark.gpu
def test_a_cpp_wrapper_compile_builds_its_stubs_on_the_build_threads(cuda_device, monkeypatch, tmp_path):
    """From empty Inductor and Triton caches, the tiny GTA model's plain decode under the backend's defaults
    (the C++ wrapper, no CUDA graphs): the compile's launcher stubs are compiled on the build threads (some while
    Inductor's loop runs), none by the loop itself, and each step matches the fused-op decode (whose eager launches
    build stubs of their own on the main thread, outside the compile)."""
    import glacompiler
    from torch._inductor.utils import fresh_inductor_cache
    from triton.runtime import build

    from test_backend_gpu import decode_plain_against_fused

    parallel_launcher_builds.install()
    assert parallel_launcher_builds.installed()  # (triton 3.6: per-signature stubs)
    torch_wait = inspect.unwrap(AsyncCompile.__dict__["_wait_futures"])
    in_loop = threading.Event()

    def flagged_wait(self, scope):
        in_loop.set()
        try:
            return torch_wait(self, scope)
        finally:
            in_loop.clear()

    monkeypatch.setattr(AsyncCompile, "_wait_futures", parallel_launcher_builds.launchers_built_alongside(flagged_wait))
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    stubs = []
    original_build = build._build

    def recording_build(name, *args, **kwargs):
        if name == "__triton_launcher":
            stubs.append((threading.current_thread().name, in_loop.is_set()))
        return original_build(name, *args, **kwargs)

    monkeypatch.setattr(build, "_build", recording_build)
    wait_for_compile_workers()
    with fresh_inductor_cache():
        decode_plain_against_fused("gta-4", glacompiler.backend(), cudagraphs=False)
    on_build_threads = [thread for thread, _ in stubs if thread.startswith("triton-launcher")]
    in_the_loop = [thread for thread, looping in stubs if looping and not thread.startswith("triton-launcher")]
    assert len(on_build_threads) >= 2 and in_the_loop == [], stubs
    assert [r.status for r in glacompiler.compile_report()] == ["rewritten"] * 2
