"""Inductor's C++ wrapper's size/stride arrays declared once per code buffer (glacompiler/compiler/
cpp_wrapper_int_arrays.py): torch 2.11 keyed them on a bound method's id, which the next bound method reuses."""
from __future__ import annotations

import pytest
import torch

from glacompiler.compiler import cpp_wrapper_int_arrays


class CodeBuffer:
    """Stands in for Inductor's IndentedBuffer: what its writeline wrote."""

    def __init__(self):
        self.lines = []

    def writeline(self, line: str) -> None:
        self.lines.append(line)


class Wrapper:
    """The part of CppWrapperCpu the method uses: its cache and the declaring implementation (one variable a call)."""

    def __init__(self):
        self.codegen_int_array_var_cache = {}
        self.declared = 0

    def _codegen_int_array_var_impl(self, int_array, writeline, known_statically):
        var = f"int_array_{self.declared}"
        self.declared += 1
        writeline(f"const int64_t {var}[] = {int_array};")
        return var

    codegen_int_array_var = cpp_wrapper_int_arrays.codegen_int_array_var


class ReusedWriteline:
    """A bound writeline whose object is reused for another buffer: what torch 2.11 met when a freed bound method's
    id went to the next one (whether it does is up to the allocator; here it always does)."""

    def __init__(self, buffer: CodeBuffer):
        self.__self__ = buffer

    def __call__(self, line: str) -> None:
        self.__self__.writeline(line)


def test_each_buffer_declares_the_arrays_it_uses():
    """Memory planning's second pass writes into a new buffer: every variable it is handed must be declared there,
    whatever the id of the callable passed as writeline."""
    wrapper = Wrapper()
    first_pass, second_pass = CodeBuffer(), CodeBuffer()
    writeline = ReusedWriteline(first_pass)
    assert wrapper.codegen_int_array_var("{64L, 8L}", writeline, True) == "int_array_0"
    assert wrapper.codegen_int_array_var("{64L, 8L}", first_pass.writeline, True) == "int_array_0"  # one declaration
    writeline.__self__ = second_pass  # the same id, another buffer
    var = wrapper.codegen_int_array_var("{64L, 8L}", writeline, True)
    assert second_pass.lines == [f"const int64_t {var}[] = {{64L, 8L}};"]
    assert first_pass.lines == ["const int64_t int_array_0[] = {64L, 8L};"]
    assert wrapper.codegen_int_array_var("{64L, 8L}", second_pass.writeline, True) == var  # Inductor's bound methods
    # Another graph (a subgraph's code) gets its own, as in torch.
    assert wrapper.codegen_int_array_var("{64L, 8L}", second_pass.writeline, True, object()) != var


def test_a_freed_buffers_id_is_not_taken_over():
    """A writer is held by its entry: a buffer made after another one was dropped cannot take over its id, and with
    it that buffer's declarations. (Keyed on the id alone, the next buffer of the same size usually gets the freed
    one's address.) The wrapper's own writer is not held: it holds the cache."""
    wrapper = Wrapper()
    dropped = CodeBuffer()
    wrapper.codegen_int_array_var("{1L}", dropped.writeline, True)
    del dropped
    for _ in range(64):
        buffer = CodeBuffer()
        var = wrapper.codegen_int_array_var("{1L}", buffer.writeline, True)
        assert buffer.lines == [f"const int64_t {var}[] = {{1L}};"]
    wrapper.lines = []
    wrapper.writeline = wrapper.lines.append  # a list's append: the writer is the list
    wrapper.codegen_int_array_var("{2L}", wrapper.writeline, True)
    own = CodeBuffer.writeline.__get__(wrapper)  # the wrapper writing its own lines (Inductor's self.writeline)
    wrapper.codegen_int_array_var("{3L}", own, True)
    held = [entry[0] for entry in wrapper.codegen_int_array_var_cache.values()]
    assert wrapper not in [h for h in held if h is not None] and wrapper.lines in held


def keyed_as_torch_2_11(self, int_array, writeline, known_statically=False, graph=None):
    cache_key = (int_array, id(writeline), known_statically, id(graph) if graph else None)
    if cache_key not in self.codegen_int_array_var_cache:
        self.codegen_int_array_var_cache[cache_key] = self._codegen_int_array_var_impl(int_array, writeline,
                                                                                       known_statically)
    return self.codegen_int_array_var_cache[cache_key]


def keyed_as_torch_2_13(self, int_array, writeline, known_statically=False, graph=None):
    writeline_id = id(writeline.__self__) if hasattr(writeline, "__self__") else id(writeline)
    return (int_array, writeline_id, known_statically, graph)


@pytest.fixture
def fresh_install(monkeypatch):
    """install() as in a new process (each test sets the method through monkeypatch)."""
    monkeypatch.setattr(cpp_wrapper_int_arrays.PATCH, "tried", False)
    monkeypatch.setattr(cpp_wrapper_int_arrays.PATCH, "applied", False)


def test_replaced_only_where_torch_keys_on_the_bound_method(monkeypatch, fresh_install):
    from torch._inductor.codegen.cpp_wrapper_cpu import CppWrapperCpu

    monkeypatch.setattr(CppWrapperCpu, "codegen_int_array_var", keyed_as_torch_2_11)
    cpp_wrapper_int_arrays.install()
    assert cpp_wrapper_int_arrays.replaced()
    assert CppWrapperCpu.codegen_int_array_var is cpp_wrapper_int_arrays.codegen_int_array_var
    cpp_wrapper_int_arrays.install()  # once per process
    assert CppWrapperCpu.codegen_int_array_var is cpp_wrapper_int_arrays.codegen_int_array_var

    monkeypatch.setattr(cpp_wrapper_int_arrays.PATCH, "tried", False)
    monkeypatch.setattr(cpp_wrapper_int_arrays.PATCH, "applied", False)
    monkeypatch.setattr(CppWrapperCpu, "codegen_int_array_var", keyed_as_torch_2_13)
    cpp_wrapper_int_arrays.install()
    assert not cpp_wrapper_int_arrays.replaced()
    assert CppWrapperCpu.codegen_int_array_var is keyed_as_torch_2_13


def test_this_torchs_method_is_replaced_only_before_2_13(fresh_install):
    """torch 2.11's method keys on the bound method's id (replaced); 2.13's on its writer (left alone). CI runs
    2.13, the GPU machine 2.11."""
    from torch._inductor.codegen.cpp_wrapper_cpu import CppWrapperCpu
    from torch.torch_version import TorchVersion

    version = TorchVersion(torch.__version__.split("+")[0])
    if not (version < "2.12" or version >= "2.13"):
        pytest.skip(f"torch {torch.__version__}: which way its method keys is not known here")
    method = CppWrapperCpu.__dict__["codegen_int_array_var"]
    if method is cpp_wrapper_int_arrays.codegen_int_array_var:  # (an earlier compile in this process replaced it)
        assert version < "2.12"
        return
    cpp_wrapper_int_arrays.install()
    try:
        if version >= "2.13":
            assert not cpp_wrapper_int_arrays.replaced()
            assert CppWrapperCpu.__dict__["codegen_int_array_var"] is method
        else:
            assert cpp_wrapper_int_arrays.replaced()
            assert CppWrapperCpu.__dict__["codegen_int_array_var"] is cpp_wrapper_int_arrays.codegen_int_array_var
    finally:
        CppWrapperCpu.codegen_int_array_var = method
