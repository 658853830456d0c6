"""Inductor's C++ wrapper of a GPU graph built with minimal optimisation and no vector ISA, as torch itself does
from 2.13 on.

Without CUDA graphs the backend compiles CUDA graphs with Inductor's C++ wrapper (its launches cost a fraction of
the Python wrapper's host time). For a GPU graph that wrapper is glue: argument checks, allocations and kernel
launches, the kernels being Triton's cubins. torch 2.13 builds it at -O1 ("On GPU the C++ wrapper is just glue",
CppPythonBindingsCodeCache.load_async); torch 2.11, the H200 image's, builds it and its precompiled header at -O3:
13.5 s of a Llama-shaped model's 68.7 s cold first step on an H200 (benchmarks/RESULTS.md). load_async has its own
opt-in for the cheaper build: optimized_code="" (present but empty) means minimal optimisation, compiled and linked
in one step.
install() makes Inductor's C++-wrapper cache pass it for non-CPU wrappers that hold no CPU kernels. Such glue also
gets no vector ISA (torch 2.13 gives it none): torch 2.11's load_async picks the host's for every wrapper, and the
first pick in a process probes each ISA the CPU claims by compiling a test program and loading it in a child
Python that imports torch (18 s of the Llama-shaped model's cold first step, profiled; the probes' verdicts are
remembered across processes, isa_probe_memo.py, but a fresh machine or container pays them). Glue compiles no
vector instruction, so its build flags lose nothing. A GPU graph with
some CPU ops either passes their kernels as optimized_code (already -O3 beside -O1 glue) or, by default
(cpp_wrapper_build_separate off), defines them in the wrapper's own code: such a wrapper keeps torch's build, as
does every CPU wrapper.

Where this torch already builds GPU glue minimally, or its load_async does not take (main_code, device_type,
..., optimized_code), nothing is wrapped. GLACOMPILER_GLUE_WRAPPER_O1=0 keeps torch's own choice. The process-wide
change touches only GPU C++ wrappers (also other backends' under cpp_wrapper=True), as torch 2.13's own does.
"""
from __future__ import annotations

import contextlib
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


# What a wrapper's own code holds where it defines CPU kernels: Inductor names them cpp_fused_*, and vectorised
# ones use at::vec (torch 2.13 looks for the latter to decide whether a wrapper needs a vector ISA).
CPU_KERNEL_MARKERS = ("cpp_fused_", "at::vec::")


def is_gpu_glue(arguments: dict) -> bool:
    """Whether a load_async call (its bound arguments) builds a non-CPU wrapper with no CPU kernels in it."""
    device_type = str(arguments.get("device_type", "cpu")).split(":", 1)[0]
    main_code = arguments.get("main_code")
    return (device_type != "cpu" and arguments.get("optimized_code") is None and not arguments.get("needs_vec_isa")
            and isinstance(main_code, str) and not any(marker in main_code for marker in CPU_KERNEL_MARKERS))


def minimal_gpu_glue(load_async):
    """load_async (the function under the classmethod) asking for the minimal build of non-CPU glue."""
    signature = inspect.signature(load_async)

    @functools.wraps(load_async)
    def load(cls, *args, **kwargs):
        bound = signature.bind(cls, *args, **kwargs)
        if not is_gpu_glue(bound.arguments):
            return load_async(*bound.args, **bound.kwargs)
        bound.arguments["optimized_code"] = ""
        with no_vector_isa():
            return load_async(*bound.args, **bound.kwargs)

    return load


@contextlib.contextmanager
def no_vector_isa():
    """Inductor's codecache picks no vector ISA while the block runs (load_async reads its module's pick_vec_isa at
    the call; its compile command, precompiled header included, is made there). Dynamo compiles one graph at a
    time, and other threads' picks, if any, would only be slower: scalar CPU code with matching flags."""
    from torch._inductor import codecache
    from torch._inductor.cpu_vec_isa import invalid_vec_isa

    picker = getattr(codecache, "pick_vec_isa", None)
    if picker is None:
        yield
        return
    codecache.pick_vec_isa = lambda: invalid_vec_isa
    try:
        yield
    finally:
        codecache.pick_vec_isa = picker


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


def gpu_glue_picks_no_isa() -> bool:
    """Whether a GPU C++ wrapper without CPU kernels compiles in this process without the host's ISA being picked
    (and so probed): through minimal_gpu_glue, or on a torch whose load_async asks whether a wrapper needs one
    (2.13 on). Where unsure, False: the caller lets the probes run as before."""
    if _wrapped:
        return True
    try:
        from torch._inductor import codecache
    except ImportError:
        return False
    return hasattr(codecache, "_resolve_needs_vec_isa")
