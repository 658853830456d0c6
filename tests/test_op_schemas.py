"""The package's ops as Inductor's C++ wrapper calls them (issue 13 goal 2). Its JIT mode calls an op whose schema
holds only tensors, optional tensors, bools, ints, floats and devices through the dispatcher from C++
(aoti_torch_call_dispatcher); on torch 2.11 (the GPU image's) any other type (a list, a string) sends every call of
the op in a compiled graph through a Python callback (torch._inductor.codecache.custom_op_wrapper) first. The rule
is the same function from 2.11 to 2.14. library.py keeps window_size as two ints for that reason; these tests hold
every schema to it, with the wrapper's own rule."""
import pytest
import torch

import glacompiler  # noqa: F401 - registers the ops
from torch._inductor.codegen.cpp_wrapper_cpu import CppWrapperCpu

PACKAGE_OPS = ("attention_with_kvcache", "attention_into", "mask_key_range")


@pytest.mark.parametrize("name", PACKAGE_OPS)
def test_the_cpp_wrapper_calls_the_op_without_a_python_callback(name):
    op = getattr(torch.ops.glacompiler, name).default
    assert CppWrapperCpu._compatible_with_stableivalue(op), op._schema


def test_a_list_argument_would_take_the_python_callback():
    """The rule tells the two apart: a schema taking window_size as an int[2], as the op once might have, fails it."""
    library = torch.library.Library("glacompiler_schema_probe", "DEF")
    library.define("windowed(Tensor q, int[2] window_size) -> Tensor")
    assert not CppWrapperCpu._compatible_with_stableivalue(torch.ops.glacompiler_schema_probe.windowed.default)
