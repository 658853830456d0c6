"""Programmatic dependent launch (PDL): the combine after a portable split kernel starts before that kernel ends.

A kernel launched with PDL (CUDA's programmatic stream serialization, sm_90 on) may be scheduled once every
program of the kernel before it on the stream has signalled (griddepcontrol.launch_dependents: Triton's
gdc_launch_dependents) or exited, instead of after that kernel's completion; it waits for the completion and its
memory (griddepcontrol.wait: gdc_wait) before its first load or store. The portable split kernel signals at its
start (a render knob that renders nothing when off: its tuned tables apply either way) and its separate combine
launches dependent: the combine's launch and its programs' start overlap the split kernel, where a tiny kernel's
launch gap is a measurable part of a short split call (benchmarks/dependent_combine_ab.py times it).

Correct after the split kernel, which launches normally (it waits for everything before it): the wait comes before
every memory access of the combine, so neither a read of the split kernel's partials nor a write over memory an
earlier kernel still reads can run early. The kernel after the combine either launches normally (it waits for the
combine) or, launched dependent itself (Inductor's kernels under TORCHINDUCTOR_ENABLE_PDL, a gla graph's op call
under CUDA graphs), may start once the combine's programs exit or signal: the combine never signals, and it waited
for the split kernel's end. Not after any kernel: after a kernel itself launched dependent that does not wait, the
combine's wait would not cover what that kernel waited on, so combine_splits() (a public helper that may follow
anything) launches normally. For the same reason another thread that launches such a kernel onto the same stream
between a call's split kernel and its combine could let the combine read early: turn the switch off there. Launches
traced into graphs take the kernels without the signal and the wait (PreparedLaunch.traced_form): Inductor launches
a user's kernels without PDL, so the wait would do nothing, and a signal there would let a following kernel of
Inductor's own that is launched dependent start early; besides, torch 2.11's analysis of a user kernel refused the
wait (8 graph-launch tests, benchmarks/RESULTS.md).

Measured (benchmarks/RESULTS.md): on an H100 the signal at the split kernel's start 1.002-1.028x the ordinary launch
on the portable split rows in three runs (2524e81, 4b0882b and its rebase onto 9b38cd8), no row slower, and the GPU
suite passes with it on; the dependent combine without a signal 0.982-0.998x, and after the Hopper latent kernels
(no signal) 0.986-1.000x, so they keep the ordinary launch; a signal before the stores 0.990-0.999x. On an H200 the
same signal (a probe on a23e33a's tables, 2026-12-02) gained 0.5-1.4 us where one wave of split programs covers the
GPU but lost 3-10% where the split kernel runs several (GTA B8 S32K). So it is off unless GLACOMPILER_PDL=1 (read
when a call is first planned: a plan keeps its choice) until an H200 A/B of today's tables decides the default."""
from __future__ import annotations

import functools
import os

import torch

from .device_limits import cuda_index
from .interpreter import triton_interpreter_enabled

ENVIRONMENT_SWITCH = "GLACOMPILER_PDL"
# The first architecture with grid dependency control (griddepcontrol).
MIN_COMPUTE_CAPABILITY = (9, 0)


def switched_on() -> bool:
    """Off unless GLACOMPILER_PDL=1."""
    return os.environ.get(ENVIRONMENT_SWITCH, "0").strip() == "1"


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
    """Whether a kernel on `device` that waits for its predecessor launches with PDL: switched on, on a CUDA GPU of
    compute capability 9.0 or later, run by a Triton that knows the option (not the interpreter)."""
    if device.type != "cuda" or not switched_on() or triton_interpreter_enabled():
        return False
    return _triton_launches_with_pdl() and _capable(cuda_index(device))
