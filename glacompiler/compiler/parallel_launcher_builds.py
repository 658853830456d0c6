"""Triton's launcher stubs for a graph's kernels built side by side instead of one after another.

Triton launches a kernel through a small C extension made for its signature (argument types and constants):
the first kernel of each signature compiles one with the host's C compiler (gcc -O3, 0.1 to 0.4 s) and keeps it in
Triton's cache. Inductor compiles a graph's kernels in its worker processes, then, in AsyncCompile._wait_futures,
takes each worker's result in turn and makes its launchers in the main process, so the stubs are compiled one after
another. Under the C++ wrapper every kernel needs one (the compile-time autotune block launches each from Python;
Inductor's static launcher is off there): on an H200's host, from empty caches, 12 stubs took 1.55 s of the gla
backend's 10.5 s first step of a Llama-shaped model (benchmarks/RESULTS.md). The Python wrapper launches Inductor's
own kernels statically, but user-defined kernels, ours among them, still take a stub each.

install() wraps _wait_futures: before Inductor's loop, each kernel's worker result is awaited on a thread of its own,
and the stub of each compile result that will be launched through Triton (TritonCompileResult, not the static
kind) is made by constructing the driver's launcher class for it, the call Triton's CompiledKernel makes when it is
first launched. The stubs land in Triton's cache, where Inductor's loop then finds them. The loop itself is
unchanged, errors included: a worker or a build that fails here is left for it to meet and report. Where this
torch has no _wait_futures(self, scope), nothing is wrapped; GLACOMPILER_PARALLEL_LAUNCHERS=0 turns it off.
"""
from __future__ import annotations

import functools
import inspect
import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor

LOGGER = logging.getLogger("glacompiler")

_installed = False  # install() has run
_wrapped = False  # ...and wrapped this torch's _wait_futures


def install() -> None:
    """Wrap AsyncCompile._wait_futures (once per process) where this torch has it with the signature we know."""
    global _installed, _wrapped
    if _installed or os.environ.get("GLACOMPILER_PARALLEL_LAUNCHERS", "1") == "0":
        return
    _installed = True
    try:
        from torch._inductor.async_compile import AsyncCompile
    except ImportError:
        return
    wait_futures = AsyncCompile.__dict__.get("_wait_futures")
    if not callable(wait_futures) or list(inspect.signature(wait_futures).parameters) != ["self", "scope"]:
        return  # a torch whose wait we do not know: leave it alone
    AsyncCompile._wait_futures = launchers_built_first(wait_futures)
    _wrapped = True


def installed() -> bool:
    return _wrapped


def launchers_built_first(wait_futures):
    """_wait_futures that first builds the launcher stubs of the scope's kernels concurrently."""

    @functools.wraps(wait_futures)
    def wait(self, scope):
        build_launchers_concurrently(worker_tasks(scope))
        return wait_futures(self, scope)

    return wait


def worker_tasks(scope: dict) -> list:
    """The worker processes' futures behind the scope's pending kernels: Inductor's LambdaFuture over a
    concurrent Future (its `future`), which resolves to (CachingAutotuner, compile time)."""
    tasks = []
    for value in list(scope.values()):
        task = getattr(value, "future", None)
        if isinstance(task, Future):
            tasks.append(task)
    return tasks


def build_launchers_concurrently(tasks: list) -> None:
    """For each task, await it and build the stubs its kernel will launch through; one thread per task (at most
    one per core). Returns when all are done; never raises."""
    if len(tasks) < 2:
        return  # one stub builds as fast in Inductor's loop
    try:
        with ThreadPoolExecutor(min(len(tasks), os.cpu_count() or 1), thread_name_prefix="triton-launcher") as pool:
            list(pool.map(_build_stubs_of, tasks))
    except Exception as error:
        LOGGER.debug("glacompiler: launcher stubs left to Inductor's loop (%r)", error)


def _build_stubs_of(task: Future) -> None:
    try:
        result = task.result()
        autotuner = result[0] if isinstance(result, tuple) and result else None
        for compiled in getattr(autotuner, "compile_results", None) or ():
            kernel = launched_through_triton(compiled)
            if kernel is not None:
                make_launcher_stub(kernel)
    except Exception as error:  # Inductor's loop meets it again and reports it
        LOGGER.debug("glacompiler: a launcher stub was left to Inductor's loop (%r)", error)


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
