"""torch's analysis of our Triton kernels, generated once per specialisation.

To learn which tensors a user-defined Triton kernel writes, torch generates the kernel's TTIR from its source and
walks it (torch._higher_order_ops.triton_kernel_wrap.generate_ttir). With graph launches (rewrite/graph_launches.py)
each of our launch nodes is analysed several times per compile: when the pass traces the plan (functionalisation),
when Inductor lowers the node and when it builds the node's IR, for every site of the model, although a model's
sites share one or two kernels and specialisations. The attention kernel's TTIR takes 0.04-0.1 s to generate on
a CPU of the machines we use (0.3 s the first time).

generate_ttir's result depends only on the kernel, the dtypes of its tensor arguments (it replaces fake tensors
and Inductor's tensor boxes with two-element tensors of that dtype), the exact values of the other arguments
(symbolic ones become 2), the TMA metadata and the target. For our kernels the module generated for one such key
is handed to every later request with the same key: torch only reads it, and it owns its MLIR context. (Triton
options read from the environment, TRITON_DEBUG and the like, are not in the key: they change the TTIR's code,
not which tensors it writes.) Any other kernel, or an argument outside that list (a real tensor, whose address
Triton specialises on), goes to torch as before. GLACOMPILER_KERNEL_ANALYSIS_MEMO=0 turns it off."""
from __future__ import annotations

import functools
import threading
from typing import Any, Optional

import torch

from ..memo import BoundedMemo
from .process_patch import ProcessPatch

_OUR_MODULE_PREFIXES = ("glacompiler.", "glacompiler_generated_")  # the package's kernels, its rendered templates
_memo = BoundedMemo(64)  # key -> (TTIR module, ordered arg names); about 0.8 MiB an entry
_lock = threading.Lock()


class _Unkeyed(Exception):
    """An argument whose bearing on the TTIR the key cannot state."""


def _python_function(kernel):
    while hasattr(kernel, "fn"):  # autotuner -> JITFunction -> the Python function
        kernel = kernel.fn
    return kernel


def is_ours(kernel) -> bool:
    return (getattr(_python_function(kernel), "__module__", None) or "").startswith(_OUR_MODULE_PREFIXES)


def _jit_function(kernel):
    from triton.runtime.autotuner import Autotuner

    return kernel.fn if isinstance(kernel, Autotuner) else kernel


def _edits_callers_arguments(kernel) -> bool:
    """generate_ttir drops launch options (num_warps, ...) from the dict it is given: the caller's own, unless an
    autotuner with configs merged its first config into a copy."""
    from triton.runtime.autotuner import Autotuner

    return not (isinstance(kernel, Autotuner) and kernel.configs)


def _kernel_key(kernel) -> tuple:
    """An autotuner is analysed as its function with its first config's arguments (generate_ttir does so); our
    launch plans wrap one kernel in a new autotuner each (their warps and stages), so the function is the key."""
    from triton.runtime.autotuner import Autotuner

    if isinstance(kernel, Autotuner):
        return (kernel.fn, tuple(sorted(kernel.configs[0].kwargs.items())) if kernel.configs else ())
    return (kernel, ())


def _argument_key(value: Any, tma_entry: Any, symbolic: tuple, is_fake_tensor, tensor_box: type) -> tuple:
    if tma_entry is not None:
        return ("tma", repr(tma_entry), str(getattr(value, "dtype", None)))
    if isinstance(value, symbolic):
        return ("symbolic",)  # (generate_ttir substitutes 2)
    if is_fake_tensor(value):
        return ("tensor", value.dtype)
    if isinstance(value, tensor_box):
        return ("tensor", value.get_dtype())
    if type(value) is float:
        return ("float", value.hex())  # (-0.0 == 0.0, but a constexpr's TTIR keeps the sign)
    if value is None or type(value) in (bool, int, str):
        return (type(value).__name__, value)
    raise _Unkeyed(type(value).__name__)


def _fake_tensor_test():
    """torch's own test where it has one (2.14 on: C++ fakes too, which generate_ttir replaces alike), else whether
    the value is a Python FakeTensor."""
    from torch._subclasses import fake_tensor

    test = getattr(fake_tensor, "is_fake_tensor", None)
    return test if test is not None else lambda value: isinstance(value, fake_tensor.FakeTensor)


def analysis_key(kernel, kwargs: dict, tma_descriptor_metadata) -> Optional[tuple]:
    """What generate_ttir's result depends on, or None where that cannot be stated (then nothing is memoised)."""
    try:
        if not is_ours(kernel):
            return None
        import sympy
        import triton
        from torch._inductor.ir import TensorBox

        symbolic = (torch.SymInt, torch.SymFloat, torch.SymBool, sympy.Expr)
        tma = dict(tma_descriptor_metadata or {})
        is_fake_tensor = _fake_tensor_test()
        key = (_kernel_key(kernel), repr(triton.runtime.driver.active.get_current_target()),
               tuple((name, _argument_key(value, tma.get(name), symbolic, is_fake_tensor, TensorBox))
                     for name, value in sorted(kwargs.items())))
        hash(key)
    except Exception:  # (_Unkeyed, an unhashable value, anything unexpected: torch analyses it as before)
        return None
    return key  # (it holds the kernel itself, whose id therefore cannot be reused)


def _memoised(generate_ttir):
    @functools.wraps(generate_ttir)
    def generate_ttir_once(kernel, kwargs, tma_descriptor_metadata, *args, **options):
        key = analysis_key(kernel, kwargs, tma_descriptor_metadata) if not (args or options) else None
        if key is None:
            return generate_ttir(kernel, kwargs, tma_descriptor_metadata, *args, **options)
        with _lock:
            entry = _memo.get(key)
        if entry is None:
            entry = generate_ttir(kernel, kwargs, tma_descriptor_metadata)
            with _lock:
                _memo.remember(key, (entry[0], list(entry[1])))
            return entry
        from torch._dynamo.utils import counters

        counters["glacompiler"]["kernel_analysis_memo_hits"] += 1
        if _edits_callers_arguments(kernel):
            # Generating succeeded for this key, so every argument the kernel does not take was a dropped option.
            arg_names = set(_jit_function(kernel).arg_names)
            for name in [name for name in kwargs if name not in arg_names]:
                kwargs.pop(name)
        module, names = entry
        return module, list(names)

    generate_ttir_once.glacompiler_memo = True
    return generate_ttir_once


def _wrap_generate_ttir() -> bool:
    """Wrap torch's generate_ttir with the memo for our kernels; whether it did."""
    from torch._higher_order_ops import triton_kernel_wrap

    original = getattr(triton_kernel_wrap, "generate_ttir", None)
    if original is None or getattr(original, "glacompiler_memo", False):
        return False
    triton_kernel_wrap.generate_ttir = _memoised(original)
    return True


PATCH = ProcessPatch(_wrap_generate_ttir, opt_out="GLACOMPILER_KERNEL_ANALYSIS_MEMO")
install = PATCH.install


def forget_all() -> None:
    with _lock:
        _memo.clear()
