"""Triton's launcher stubs for a graph's kernels built side by side instead of one after another.

Triton up to 3.6 launches a kernel through a small C extension made for its signature (argument types and
constants): the first kernel of each signature compiles one with the host's C compiler (gcc -O3, 0.1 to 0.4 s)
and keeps it in Triton's cache. Inductor compiles a graph's kernels in its worker processes, then, in
AsyncCompile._wait_futures, takes each worker's result in turn and makes its launchers in the main process, so the
stubs are compiled one after another. Under the C++ wrapper every kernel needs one (the compile-time autotune block
launches each from Python; Inductor's static launcher is off there): on an H200's host, from empty caches, 12 stubs
took 3.7 s of a cold gla first step of a Llama-shaped model under cProfile (benchmarks/RESULTS.md). The Python
wrapper launches Inductor's own kernels statically, but user-defined kernels, ours among them, still take a stub
each.

install() wraps _wait_futures. Before Inductor's loop, each pending kernel's worker result (a LambdaFuture over the
worker's Future) gets a daemon thread: await the worker (at most BUILD_WAIT_S), then make the stub of each compile
result Triton will launch (TritonCompileResult, not the static kind) by constructing the driver's launcher class
for it, the call Triton's CompiledKernel makes at its first launch. The stub lands in Triton's cache. Kernels of
one signature share one build (the others wait for it); gcc runs are held to one a core. Inductor's loop runs as
before, in its order and with its own worker timeout (torch 2.13's compile_worker_wait_timeout): each kernel's
result first waits for that kernel's build (at most BUILD_WAIT_S), then finds its stub in the cache. A failed
worker or build is left for the loop to meet and report. Daemon threads, one per kernel, never hold up the
process's exit (a worker that never answers) nor outlive a fork.

Installed only where Triton's NVIDIA driver compiles per-signature stubs (its module has make_launcher: 3.6 does,
3.9 launches every kernel through one generic extension) and this torch has _wait_futures(self, scope). Once
installed (the backend's first graph), it serves every Inductor compile of the process, other backends' too.
GLACOMPILER_PARALLEL_LAUNCHERS=0 turns it off.
"""
from __future__ import annotations

import functools
import inspect
import logging
import os
import threading
from concurrent.futures import Future, TimeoutError as FutureTimeoutError

from .process_patch import ProcessPatch

LOGGER = logging.getLogger("glacompiler")

BUILD_WAIT_S = 60.0  # how long a build waits for its worker, and a kernel's result for its build
BUILD_MARK = "_glacompiler_stub_build"  # set on a LambdaFuture whose result already waits for a build


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


_compiling = threading.BoundedSemaphore(_cores())  # gcc runs at once: one a core


def _fresh_semaphore_after_fork() -> None:
    global _compiling
    _compiling = threading.BoundedSemaphore(_cores())  # (the parent's may have been held by a thread not forked)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_semaphore_after_fork)


def _wrap_wait_futures() -> bool:
    """Wrap AsyncCompile._wait_futures where it helps and is the one we know; whether it did."""
    if not triton_compiles_launcher_stubs():
        return False
    try:
        from torch._inductor.async_compile import AsyncCompile
    except ImportError:
        return False
    wait_futures = AsyncCompile.__dict__.get("_wait_futures")
    if not callable(wait_futures) or list(inspect.signature(wait_futures).parameters) != ["self", "scope"]:
        return False  # a torch whose wait we do not know: leave it alone
    AsyncCompile._wait_futures = launchers_built_alongside(wait_futures)
    return True


PATCH = ProcessPatch(_wrap_wait_futures, opt_out="GLACOMPILER_PARALLEL_LAUNCHERS")
install = PATCH.install


def installed() -> bool:
    return PATCH.applied


def triton_compiles_launcher_stubs() -> bool:
    """Whether this Triton's NVIDIA driver compiles a C launcher per kernel signature."""
    try:
        from triton.backends.nvidia import driver as nvidia_driver
    except Exception:  # no Triton, or no NVIDIA backend in it
        return False
    return callable(getattr(nvidia_driver, "make_launcher", None))


def launchers_built_alongside(wait_futures):
    """_wait_futures that first sets the stub builds of the scope's kernels going, each kernel's result waiting
    for its own build."""

    @functools.wraps(wait_futures)
    def wait(self, scope):
        build_stubs_alongside(scope)
        return wait_futures(self, scope)

    return wait


def build_stubs_alongside(scope: dict) -> None:
    """For each pending kernel of the scope, a thread that awaits its worker and builds its stubs; the kernel's
    LambdaFuture then waits for that build before its own result. Never raises."""
    try:
        from torch._inductor.codecache import LambdaFuture

        pending = [value for value in list(scope.values())
                   if isinstance(value, LambdaFuture) and isinstance(getattr(value, "future", None), Future)
                   and not hasattr(value, BUILD_MARK)]  # (one Inductor caches by source may be in two scopes)
        if len(pending) < 2:
            return  # one stub builds as fast in Inductor's loop
        prepare_driver()
        claims: dict = {}  # stub key -> the Future of the build that makes it, for this scope's kernels
        claims_lock = threading.Lock()
        for kernel_future in pending:
            build = _in_a_thread(_build_stubs_of, kernel_future.future, claims, claims_lock)
            setattr(kernel_future, BUILD_MARK, build)
            kernel_future.result_fn = _after(build, kernel_future.result_fn)
    except Exception as error:
        LOGGER.debug("glacompiler: launcher stubs left to Inductor's loop (%r)", error)


def prepare_driver() -> None:
    """Triton's driver, made lazily and without a lock: made here, on the calling thread, not raced for by the
    build threads."""
    from triton.runtime.driver import driver

    driver.active.launcher_cls


def _in_a_thread(function, *args) -> Future:
    """function(*args) (which never raises) on a daemon thread; the Future ends with it."""
    ended = Future()
    ended.set_running_or_notify_cancel()

    def run():
        try:
            function(*args)
        finally:
            ended.set_result(None)

    threading.Thread(target=run, name="triton-launcher", daemon=True).start()
    return ended


def _after(build: Future, result_fn):
    """result_fn once `build` has ended: it ends once the worker has answered (which Inductor's timeout, where it
    has one, waits for before calling this) and its gcc has run. Past BUILD_WAIT_S (a worker still compiling)
    result_fn runs anyway: it waits for its worker as it always did, and builds the stub itself where the thread
    has not."""

    def result():
        try:
            build.result(timeout=BUILD_WAIT_S)
        except FutureTimeoutError:  # (concurrent.futures' own class before Python 3.11)
            pass
        return result_fn()

    return result


def _build_stubs_of(task: Future, claims: dict, claims_lock: threading.Lock) -> None:
    try:
        if task.exception(timeout=BUILD_WAIT_S) is not None:  # (the loop raises it, with its own traceback)
            return
        result = task.result()
        autotuner = result[0] if isinstance(result, tuple) and result else None
        for compiled in getattr(autotuner, "compile_results", None) or ():
            kernel = launched_through_triton(compiled)
            if kernel is not None:
                _build_once(kernel, claims, claims_lock)
    except Exception as error:  # Inductor's loop meets it again and reports it
        LOGGER.debug("glacompiler: a launcher stub was left to Inductor's loop (%r)", error)


def _build_once(kernel, claims: dict, claims_lock: threading.Lock) -> None:
    """make_launcher_stub(kernel), unless another kernel of the same signature has claimed its build: then wait
    for that one (the stub it makes is this kernel's too)."""
    key = stub_key(kernel)
    with claims_lock:
        claim = claims.get(key)
        mine = claim is None
        if mine:
            claim = claims[key] = Future()
    if not mine:
        claim.result()
        return
    try:
        with _compiling:
            make_launcher_stub(kernel)
    finally:
        claim.set_result(None)


def stub_key(kernel) -> str:
    """What a Triton 3.6 stub's source depends on (make_launcher): the signature's types in order and the
    tensor-descriptor metadata. (Were a Triton's stub to depend on more, a kernel sharing a key with another would
    find no stub of its own and build it in Inductor's loop, as without us.)"""
    return repr((tuple(kernel.src.signature.values()), getattr(kernel.metadata, "tensordesc_meta", None)))


def launched_through_triton(compiled):
    """The Triton CompiledKernel behind a compile result that Inductor launches through Triton's launcher (a
    TritonCompileResult whose kernel has no launcher yet); None for a statically launched one."""
    from torch._inductor.runtime.triton_heuristics import TritonCompileResult

    if not isinstance(compiled, TritonCompileResult):
        return None
    kernel = getattr(compiled, "kernel", None)
    if kernel is None or getattr(kernel, "_run", None) is not None or not hasattr(kernel, "src"):
        return None
    return kernel


def make_launcher_stub(kernel) -> None:
    """Build (or find in Triton's cache) the launcher stub of a CompiledKernel, as its first launch would; the
    launcher object itself is dropped (the kernel makes its own, from the cache)."""
    from triton.runtime.driver import driver

    driver.active.launcher_cls(kernel.src, kernel.metadata)
