"""Inductor's C++ wrapper declares each size/stride array once per writer (code buffer), as torch 2.13 does.

torch 2.11's CppWrapperCpu.codegen_int_array_var remembers the variable it declared for an array under
id(writeline), where writeline is a bound method such as `self.wrapper_call.writeline`: a new object at every call,
freed right after, whose id the next bound method often reuses. Arrays are declared through more than one writer
(the wrapper's own lines, which it replays into the wrapper's function later, and that function's buffer, where
allocations go), so an allocation can be handed a variable declared elsewhere in the generated code (later, or
in another scope), and the C++ compile fails ("'int_array_9' was not declared in this scope"). Whether
the ids collide depends on the allocator's state: the failure is intermittent. The backend compiles CUDA graphs
without CUDA-graph capture with the C++ wrapper by default, and a failed compile falls back to the Python wrapper
(with a warning): the step then pays the Python wrapper's host time. (H200, torch 2.11: GPU test runs in eight
workers fell back on one to three graphs a run, tiny GTA-4 models' among them.)

install() replaces the method, where its source keys on id(writeline), by one that keys on the writer the bound
method belongs to, and holds that writer in the entry (unless it is the wrapper itself, which holds the cache) so
that its id cannot be reused while the entry lives (torch 2.13's fix keys on the writer too). Where this torch
keys otherwise, nothing is replaced. Like torch 2.13's fix, the change is process-wide: other backends' C++
wrappers get it too.
"""
from __future__ import annotations

import inspect

from .process_patch import ProcessPatch


def keys_on_bound_method_id(method) -> bool:
    """Whether codegen_int_array_var's source keys its cache on id(writeline) itself (torch 2.11's)."""
    try:
        source = inspect.getsource(method)
    except (OSError, TypeError):
        return False
    return "id(writeline)" in source and "__self__" not in source


def codegen_int_array_var(self, int_array: str, writeline, known_statically=False, graph=None) -> str:
    """CppWrapperCpu.codegen_int_array_var with the cache keyed on the writer (buffer) `writeline` belongs to."""
    owner = getattr(writeline, "__self__", writeline)
    key = (int_array, id(owner), known_statically, id(graph) if graph else None)
    cache = self.codegen_int_array_var_cache
    entry = cache.get(key)
    if entry is None:
        # The entry holds its writer, so no other object takes that id while it lives; the wrapper itself outlives
        # its cache (held, it would make a reference cycle).
        held = None if owner is self else owner
        entry = cache[key] = (held, self._codegen_int_array_var_impl(int_array, writeline, known_statically))
    return entry[1]


def _replace_codegen_int_array_var() -> bool:
    """Replace torch 2.11's codegen_int_array_var where it keys on bound-method ids; whether it did."""
    try:
        from torch._inductor.codegen.cpp_wrapper_cpu import CppWrapperCpu
    except ImportError:
        return False
    method = CppWrapperCpu.__dict__.get("codegen_int_array_var")
    if method is None or not hasattr(CppWrapperCpu, "_codegen_int_array_var_impl") \
            or list(inspect.signature(method).parameters) != ["self", "int_array", "writeline", "known_statically",
                                                              "graph"] \
            or not keys_on_bound_method_id(method):
        return False
    CppWrapperCpu.codegen_int_array_var = codegen_int_array_var
    return True


PATCH = ProcessPatch(_replace_codegen_int_array_var)
install = PATCH.install


def replaced() -> bool:
    """Whether this process's C++ wrappers declare int arrays through codegen_int_array_var above."""
    return PATCH.applied
