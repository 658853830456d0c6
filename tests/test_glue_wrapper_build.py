"""The C++ wrapper of a GPU graph built with minimal optimisation (glacompiler/compiler/glue_wrapper_build.py): what
the wrapped load_async passes on, when install() wraps and when it leaves torch alone. The real build on torch 2.11
is tests/test_backend_gpu.py's."""
import inspect

import pytest
import torch
from torch._inductor.codecache import CppWrapperCodeCache

from glacompiler.compiler import glue_wrapper_build


def load_async_as_torch_2_11(cls, main_code, device_type="cpu", submit_fn=None, extra_flags=(), optimized_code=None,
                             needs_vec_isa=None, kernel_needs_vec_isa=None):
    """torch 2.11's signature; its body builds at -O3 unless optimized_code is given (min_optimize)."""
    return dict(main_code=main_code, device_type=device_type, submit_fn=submit_fn, extra_flags=extra_flags,
                optimized_code=optimized_code, min_optimize=optimized_code is not None)


def load_async_as_torch_2_13(cls, main_code, device_type="cpu", submit_fn=None, extra_flags=(), optimized_code=None):
    min_optimize = optimized_code is not None or device_type != "cpu"
    return min_optimize


@pytest.fixture
def fresh_install(monkeypatch):
    """install() as in a new process (each test sets CppWrapperCodeCache.load_async through monkeypatch)."""
    monkeypatch.setattr(glue_wrapper_build, "_installed", False)
    monkeypatch.setattr(glue_wrapper_build, "_wrapped", False)
    monkeypatch.delenv("GLACOMPILER_GLUE_WRAPPER_O1", raising=False)


def test_gpu_glue_asks_for_the_minimal_build():
    load = glue_wrapper_build.minimal_gpu_glue(load_async_as_torch_2_11)
    assert inspect.signature(load) == inspect.signature(load_async_as_torch_2_11)
    # As Inductor's generated module calls it (keywords), and positionally.
    gpu = load(CppWrapperCodeCache, main_code="glue", device_type="cuda", extra_flags=("-lfoo",))
    assert gpu["optimized_code"] == "" and gpu["min_optimize"] and gpu["extra_flags"] == ("-lfoo",)
    assert load(CppWrapperCodeCache, "glue", "cuda:1")["min_optimize"]
    # A CPU wrapper, and a GPU wrapper that brings CPU kernels (built at -O3 beside -O1 glue): as torch has it.
    assert load(CppWrapperCodeCache, main_code="glue", device_type="cpu")["optimized_code"] is None
    assert load(CppWrapperCodeCache, main_code="glue")["optimized_code"] is None
    kernels = load(CppWrapperCodeCache, main_code="glue", device_type="cuda", optimized_code="kernels")
    assert kernels["optimized_code"] == "kernels"


def test_install_wraps_a_torch_that_builds_gpu_glue_at_o3(fresh_install, monkeypatch):
    monkeypatch.setattr(CppWrapperCodeCache, "load_async", classmethod(load_async_as_torch_2_11))
    glue_wrapper_build.install()
    assert glue_wrapper_build.installed()
    assert CppWrapperCodeCache.load_async(main_code="glue", device_type="cuda")["min_optimize"]
    assert not CppWrapperCodeCache.load_async(main_code="glue", device_type="cpu")["min_optimize"]
    glue_wrapper_build.install()  # once per process
    assert CppWrapperCodeCache.load_async.__func__.__wrapped__ is load_async_as_torch_2_11


@pytest.mark.parametrize("case", ["torch_2_13", "unknown_signature", "opted_out"])
def test_install_leaves_torch_alone(fresh_install, monkeypatch, case):
    original = {"torch_2_13": load_async_as_torch_2_13, "opted_out": load_async_as_torch_2_11,
                "unknown_signature": lambda cls, code, device="cpu": None}[case]
    monkeypatch.setattr(CppWrapperCodeCache, "load_async", classmethod(original))
    if case == "opted_out":
        monkeypatch.setenv("GLACOMPILER_GLUE_WRAPPER_O1", "0")
    glue_wrapper_build.install()
    assert not glue_wrapper_build.installed()
    assert CppWrapperCodeCache.load_async.__func__ is original


def test_this_torch_is_recognised():
    """torch 2.13 on builds GPU glue at -O1 itself (nothing to wrap); older ones do not."""
    real = CppWrapperCodeCache.load_async
    real = getattr(real, "__func__", real)
    real = getattr(real, "__wrapped__", real)  # (if the backend already wrapped it in this process)
    version = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
    assert glue_wrapper_build._builds_gpu_glue_minimally(real) == (version >= (2, 13))
