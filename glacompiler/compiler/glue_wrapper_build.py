"""Inductor's C++ wrapper of a GPU graph built with minimal optimisation and no vector ISA, as torch itself does
from 2.13 on.

Without CUDA graphs the backend compiles CUDA graphs with Inductor's C++ wrapper (its launches cost a fraction of
the Python wrapper's host time). For a GPU graph that wrapper is glue: argument checks, allocations and kernel
launches, the kernels being Triton's cubins. torch 2.13 builds it at -O1 ("On GPU the C++ wrapper is just glue",
CppPythonBindingsCodeCache.load_async); torch 2.11, the H200 image's, builds it and its precompiled header at -O3:
13.5 s of a Llama-shaped model's 68.7 s cold first step on an H200 (benchmarks/RESULTS.md). load_async has its own
opt-in for the cheaper build: optimized_code="" (present but empty) means minimal optimisation, compiled and linked
in one step.
install() makes Inductor's C++-wrapper cache pass it for non-CPU wrappers that hold no CPU kernels. A GPU graph with
some CPU ops either passes their kernels as optimized_code (already -O3 beside -O1 glue) or, by default
(cpp_wrapper_build_separate off), defines them in the wrapper's own code: such a wrapper keeps torch's build, as
does every CPU wrapper.

Glue also gets no vector ISA (torch 2.13 gives it none). torch 2.11's load_async picks the host's for every wrapper,
and the first pick in a process probes each ISA the CPU claims by compiling a test program and loading it in a
child Python that imports torch: about 20 s of the Llama-shaped model's cold first step on an H200's host, even with
the probes run concurrently (their verdicts are remembered across processes, isa_probe_memo.py, but a fresh machine
or container pays them). Glue compiles no vector instruction, so its build flags lose nothing. The ISA is withheld
through codecache's pick_vec_isa, which install() replaces once by one that answers "none" only inside a glue build
on the calling thread (a context flag) and asks torch's otherwise.

Where this torch already builds GPU glue minimally, or its load_async does not take (main_code, device_type,
..., optimized_code), nothing is wrapped. GLACOMPILER_GLUE_WRAPPER_O1=0 keeps torch's own choice. The process-wide
change touches only GPU C++ wrappers (also other backends' under cpp_wrapper=True), as torch 2.13's own does.
"""
from __future__ import annotations

import functools
import inspect

from ..context_flag import ContextFlag
from .process_patch import ProcessPatch

_building_glue = ContextFlag("glacompiler_gpu_glue_build")  # inside minimal_gpu_glue's call of load_async


def _builds_gpu_glue_minimally(load_async) -> bool:
    """Whether this torch's load_async already takes minimal optimisation for non-CPU devices (torch 2.13 on)."""
    try:
        source = inspect.getsource(load_async)
    except (OSError, TypeError):
        return False
    return 'device_type != "cpu"' in source and "min_optimize" in source


# What a wrapper's own code holds where it defines CPU kernels: Inductor names them cpp_fused_*, and vectorised
# ones use at::vec or prod_masked_reduce (torch 2.13 looks for these two to decide whether a wrapper needs a
# vector ISA).
CPU_KERNEL_MARKERS = ("cpp_fused_", "at::vec::", "prod_masked_reduce(")


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
        with _building_glue.raised():
            return load_async(*bound.args, **bound.kwargs)

    return load


def no_isa_inside_glue_builds(pick_vec_isa, no_isa):
    """codecache's pick_vec_isa that answers no_isa inside a glue build of this thread and asks pick_vec_isa
    otherwise (load_async reads its module's pick_vec_isa when called, and makes its compile command there,
    precompiled header included). Other threads' picks, and those of the CPU code generator, which imports its
    own, are torch's."""

    @functools.wraps(pick_vec_isa)
    def pick():
        return no_isa if _building_glue.is_set() else pick_vec_isa()

    return pick


def _wrap_load_async() -> bool:
    """Wrap the C++-wrapper cache's load_async where it helps and is the one we know; whether it did."""
    try:
        from torch._inductor.codecache import CppWrapperCodeCache
    except ImportError:
        return False
    load_async = getattr(CppWrapperCodeCache.load_async, "__func__", None)
    if load_async is None or _builds_gpu_glue_minimally(load_async):
        return False
    parameters = list(inspect.signature(load_async).parameters)
    if parameters[:3] != ["cls", "main_code", "device_type"] or "optimized_code" not in parameters:
        return False  # a torch whose build we do not know: leave it alone
    from torch._inductor import codecache, cpu_vec_isa

    pick_vec_isa, no_isa = getattr(codecache, "pick_vec_isa", None), getattr(cpu_vec_isa, "invalid_vec_isa", None)
    if pick_vec_isa is None or no_isa is None:
        return False
    codecache.pick_vec_isa = no_isa_inside_glue_builds(pick_vec_isa, no_isa)
    CppWrapperCodeCache.load_async = classmethod(minimal_gpu_glue(load_async))
    return True


PATCH = ProcessPatch(_wrap_load_async, opt_out="GLACOMPILER_GLUE_WRAPPER_O1")
install = PATCH.install


def installed() -> bool:
    """Whether this process builds GPU C++ wrappers through minimal_gpu_glue."""
    return PATCH.applied


def gpu_glue_picks_no_isa() -> bool:
    """Whether a GPU C++ wrapper without CPU kernels compiles in this process without the host's ISA being picked
    (and so probed): through minimal_gpu_glue, or on a torch whose load_async asks whether a wrapper needs one
    (2.13 on). Where unsure, False: the caller lets the probes run as before."""
    if installed():
        return True
    try:
        from torch._inductor import codecache
    except ImportError:
        return False
    return hasattr(codecache, "_resolve_needs_vec_isa")


def wrapper_picks_isa(example_inputs) -> bool:
    """Whether compiling a graph with these inputs under the C++ wrapper may pick (and so probe) the host's ISA: not
    where every tensor input is on an accelerator and GPU glue picks none. A graph of accelerator inputs that
    computes on the CPU inside still picks one, in Inductor's CPU code generator: its probes then run when
    Inductor gets there, one after another. A graph with CPU inputs, or none, is taken to need one."""
    devices = {t.device.type for t in example_inputs if hasattr(t, "device")}
    return not devices or "cpu" in devices or not gpu_glue_picks_no_isa()
