"""Inductor's C++ wrapper of a GPU graph built with minimal optimisation, as torch itself does from 2.13 on.

Without CUDA graphs the backend compiles CUDA graphs with Inductor's C++ wrapper (its launches cost a fraction of
the Python wrapper's host time). For a GPU graph that wrapper is glue: argument checks, allocations and kernel
launches, the kernels being Triton's cubins. torch 2.13 builds it at -O1 ("On GPU the C++ wrapper is just glue",
CppPythonBindingsCodeCache.load_async); torch 2.11, the H200 image's, builds it and its precompiled header at -O3,
which is most of the C++ wrapper's cold compile (benchmarks/RESULTS.md). load_async has its own opt-in for the
cheaper build: optimized_code="" (present but empty) means minimal optimisation, compiled and linked in one step.
install() makes Inductor's C++-wrapper cache pass it for non-CPU wrappers that bring no CPU kernels of their own
(those pass their kernels there, and already get the -O1 glue). CPU wrappers and CPU kernels are left alone.

Where this torch already builds GPU glue minimally, or its load_async does not take (main_code, device_type,
..., optimized_code), nothing is wrapped. GLACOMPILER_GLUE_WRAPPER_O1=0 keeps torch's own choice. The process-wide
change touches only GPU C++ wrappers (also other backends' under cpp_wrapper=True), as torch 2.13's own does.
"""
from __future__ import annotations

import functools
import inspect
import os

_installed = False  # install() has run
_wrapped = False  # ...and wrapped this torch's load_async


def _builds_gpu_glue_minimally(load_async) -> bool:
    """Whether this torch's load_async already takes minimal optimisation for non-CPU devices (torch 2.13 on)."""
    try:
        source = inspect.getsource(load_async)
    except (OSError, TypeError):
        return False
    return 'device_type != "cpu"' in source and "min_optimize" in source


def minimal_gpu_glue(load_async):
    """load_async (the function under the classmethod) asking for the minimal build of non-CPU glue."""
    signature = inspect.signature(load_async)

    @functools.wraps(load_async)
    def load(cls, *args, **kwargs):
        bound = signature.bind(cls, *args, **kwargs)
        device_type = bound.arguments.get("device_type", "cpu")
        if bound.arguments.get("optimized_code") is None and str(device_type).split(":", 1)[0] != "cpu":
            bound.arguments["optimized_code"] = ""
        return load_async(*bound.args, **bound.kwargs)

    return load


def install() -> None:
    """Wrap the C++-wrapper cache's load_async (once per process) where it helps and is the one we know."""
    global _installed, _wrapped
    if _installed or os.environ.get("GLACOMPILER_GLUE_WRAPPER_O1", "1") == "0":
        return
    _installed = True
    try:
        from torch._inductor.codecache import CppWrapperCodeCache
    except ImportError:
        return
    load_async = getattr(CppWrapperCodeCache.load_async, "__func__", None)
    if load_async is None or _builds_gpu_glue_minimally(load_async):
        return
    parameters = list(inspect.signature(load_async).parameters)
    if parameters[:3] != ["cls", "main_code", "device_type"] or "optimized_code" not in parameters:
        return  # a torch whose build we do not know: leave it alone
    CppWrapperCodeCache.load_async = classmethod(minimal_gpu_glue(load_async))
    _wrapped = True


def installed() -> bool:
    """Whether this process builds GPU C++ wrappers through minimal_gpu_glue."""
    return _wrapped
