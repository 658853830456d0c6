"""torch's analysis of our Triton kernels, generated once per specialisation.

To learn which tensors a user-defined Triton kernel writes, torch generates the kernel's TTIR from its source and
walks it (torch._higher_order_ops.triton_kernel_wrap.generate_ttir). With graph launches (rewrite/graph_launches.py)
each of our launch nodes is analysed several times per compile: when the pass traces the plan (functionalisation),
when Inductor lowers the node and when it builds the node's IR, for every site of the model, although a model's
sites share one or two kernels and specialisations. The attention kernel's TTIR takes 0.04-0.1 s to generate on
a CPU of the machines we use (0.3 s the first time).

generate_ttir's result depends only on the kernel, the dtypes of its tensor arguments (it replaces fake tensors
and Inductor's tensor boxes with two-element tensors of that dtype), the values of the other arguments (symbolic
ones become 2), the TMA metadata and the target. For our kernels the module generated for one such key is handed
to every later request with the same key: torch only reads it, and it owns its MLIR context. Any other kernel, or
an argument outside that list (a real tensor, whose address Triton specialises on), goes to torch as before.
GLACOMPILER_KERNEL_ANALYSIS_MEMO=0 turns it off."""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Any, Optional

import torch

_OUR_MODULES = "glacompiler"  # the package's kernels and its rendered templates (glacompiler_generated_<hash>)
_CAPACITY = 256  # entries kept (a new shape's strides make a new key: a long-running server compiles many)
_memo: "OrderedDict[tuple, tuple]" = OrderedDict()  # key -> (TTIR module, ordered arg names, kwargs it dropped)
_lock = threading.Lock()
_installed = False


class _Unkeyed(Exception):
    """An argument whose bearing on the TTIR the key cannot state."""


def _python_function(kernel):
    while hasattr(kernel, "fn"):  # autotuner -> JITFunction -> the Python function
        kernel = kernel.fn
    return kernel


def is_ours(kernel) -> bool:
    return (getattr(_python_function(kernel), "__module__", None) or "").startswith(_OUR_MODULES)


def _argument_key(value: Any, tma_entry: Any) -> tuple:
    import sympy
    from torch._inductor.ir import TensorBox
    from torch._subclasses.fake_tensor import FakeTensor

    if tma_entry is not None:
        return ("tma", repr(tma_entry), str(getattr(value, "dtype", None)))
    if isinstance(value, (torch.SymInt, torch.SymFloat, torch.SymBool, sympy.Expr)):
        return ("symbolic",)  # (generate_ttir substitutes 2)
    if isinstance(value, FakeTensor):
        return ("tensor", value.dtype)
    if isinstance(value, TensorBox):
        return ("tensor", value.get_dtype())
    if value is None or type(value) in (bool, int, float, str):
        return (type(value).__name__, value)
    raise _Unkeyed(type(value).__name__)


def _kernel_key(kernel) -> tuple:
    """An autotuner is analysed as its function with its first config's arguments (generate_ttir does so); our
    launch plans wrap one kernel in a new autotuner each (their warps and stages), so the function is the key."""
    from triton.runtime.autotuner import Autotuner

    if isinstance(kernel, Autotuner):
        return (kernel.fn, tuple(sorted(kernel.configs[0].kwargs.items())) if kernel.configs else ())
    return (kernel, ())


def analysis_key(kernel, kwargs: dict, tma_descriptor_metadata) -> Optional[tuple]:
    """What generate_ttir's result depends on, or None where that cannot be stated (then nothing is memoised)."""
    import triton

    if not is_ours(kernel):
        return None
    tma = dict(tma_descriptor_metadata or {})
    try:
        key = (_kernel_key(kernel), repr(triton.runtime.driver.active.get_current_target()),
               tuple((name, _argument_key(value, tma.get(name))) for name, value in sorted(kwargs.items())))
        hash(key)
    except (_Unkeyed, TypeError):
        return None
    return key  # (it holds the kernel itself, whose id therefore cannot be reused)


def _memoised(generate_ttir):
    def generate_ttir_once(kernel, kwargs, tma_descriptor_metadata, *args, **options):
        key = analysis_key(kernel, kwargs, tma_descriptor_metadata) if not (args or options) else None
        if key is None:
            return generate_ttir(kernel, kwargs, tma_descriptor_metadata, *args, **options)
        with _lock:
            entry = _memo.get(key)
            if entry is not None:
                _memo.move_to_end(key)
        if entry is None:
            given = set(kwargs)
            module, names = generate_ttir(kernel, kwargs, tma_descriptor_metadata)
            entry = (module, list(names), given - set(kwargs))
            with _lock:
                _memo[key] = entry
                while len(_memo) > _CAPACITY:
                    _memo.popitem(last=False)
        else:
            from torch._dynamo.utils import counters

            counters["glacompiler"]["kernel_analysis_memo_hits"] += 1
        module, names, dropped = entry
        for name in dropped:  # generate_ttir drops launch options (num_warps, ...) from the caller's dict
            kwargs.pop(name, None)
        return module, list(names)

    generate_ttir_once.glacompiler_memo = True
    return generate_ttir_once


def install() -> None:
    """Wrap torch's generate_ttir (once per process) with the memo for our kernels."""
    global _installed
    if _installed or os.environ.get("GLACOMPILER_KERNEL_ANALYSIS_MEMO", "1") == "0":
        return
    _installed = True
    from torch._higher_order_ops import triton_kernel_wrap

    original = getattr(triton_kernel_wrap, "generate_ttir", None)
    if original is None or getattr(original, "glacompiler_memo", False):
        return
    triton_kernel_wrap.generate_ttir = _memoised(original)


def forget_all() -> None:
    with _lock:
        _memo.clear()
