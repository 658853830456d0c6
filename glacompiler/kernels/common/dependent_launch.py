"""Programmatic dependent launch (PDL): the combine after a split kernel starts before that kernel has finished.

A kernel launched with PDL (CUDA's programmatic stream serialization, sm_90 on) may be scheduled as soon as every
program of the kernel before it on the stream has exited, instead of after that kernel's completion; it waits for
the completion and its memory (griddepcontrol.wait: Triton's gdc_wait) before its first load or store. The combine
takes it: its launch and the index work before its wait overlap the split kernel's last programs, where a tiny
kernel's launch gap is a measurable part of a short split call (benchmarks/dependent_combine_ab.py times it).

Correct after any kernel: the wait comes before every memory access of the combine, so neither a read of the
split kernel's partials nor a write over memory the earlier kernel still reads can run early; and the kernel
after the combine is launched without PDL, so it waits for the combine as before. The wait is a no-op in a launch
without PDL (a graph that Inductor launches: traced launches take no launch options).

GLACOMPILER_PDL=0 turns it off (for an A/B, or a driver that refuses the launch attribute)."""
from __future__ import annotations

import functools
import os

import torch

from .device_limits import cuda_index
from .interpreter import triton_interpreter_enabled

ENVIRONMENT_SWITCH = "GLACOMPILER_PDL"
# The first architecture with grid dependency control (griddepcontrol).
MIN_COMPUTE_CAPABILITY = (9, 0)


def switched_off() -> bool:
    return os.environ.get(ENVIRONMENT_SWITCH, "1").strip() == "0"


@functools.lru_cache(maxsize=None)
def _triton_launches_with_pdl() -> bool:
    """Whether Triton's NVIDIA backend takes the launch_pdl option (Triton 3.4 on)."""
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
    except ImportError:
        return False
    return "launch_pdl" in getattr(CUDAOptions, "__dataclass_fields__", {})


@functools.lru_cache(maxsize=None)
def _capable(device_index: int) -> bool:
    return (torch.version.cuda is not None
            and torch.cuda.get_device_capability(device_index) >= MIN_COMPUTE_CAPABILITY)


def dependent_launch_enabled(device: torch.device) -> bool:
    """Whether a kernel on `device` that waits for its predecessor launches with PDL: a CUDA GPU of compute
    capability 9.0 or later, run by a Triton that knows the option (not the interpreter), unless switched off."""
    if device.type != "cuda" or switched_off() or triton_interpreter_enabled():
        return False
    return _triton_launches_with_pdl() and _capable(cuda_index(device))
