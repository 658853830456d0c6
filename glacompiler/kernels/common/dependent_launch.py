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

When (benchmarks/RESULTS.md): the signal and the dependent combine pay only while the split kernel's programs
leave a good part of the GPU's program slots free. On an H100 (dependent_combine_ab.py --splits, one run, GTA and GQA
rows at 4 to 64 splits) it ran 0.994-1.019x the ordinary launches up to 0.78 of a wave of the binaries' resident
programs, and 0.983-0.998x at 0.97 waves and more; the table's configs, all within 0.6 of a wave there, gained
1.002-1.030x in four runs. An H200 probe of the same signal (2026-12-02) gained 0.5-1.4 us where one wave covered
the split programs and lost 3-10% where they ran in several. So by default a split plan launches its combine
dependent where its programs fill at most MAX_WAVE_FILL of the slots (SMs x the config's resident programs,
portable/config.py's model of them); GLACOMPILER_PDL=0 turns it off, GLACOMPILER_PDL=1 takes it for every portable
split plan with a separate combine (for measurements). The setting is read when a call is first planned: a plan
keeps its choice. The dependent combine without a signal (0.982-0.998x), after the Hopper latent kernels (no signal:
0.986-1.000x), and a signal before the stores (0.990-0.999x) all lost on an H100: those keep the ordinary launch."""
from __future__ import annotations

import functools
import os
import warnings

import torch

from .device_limits import cuda_index
from .interpreter import triton_interpreter_enabled
from .splits import device_multiprocessors

ENVIRONMENT_SWITCH = "GLACOMPILER_PDL"
# The first architecture with grid dependency control (griddepcontrol).
MIN_COMPUTE_CAPABILITY = (9, 0)
# The largest fraction of the GPU's program slots (SMs x portable/config.py's resident_programs) a split kernel may
# fill and still launch its combine dependent by default. Measured in waves of the binaries' own residency: gains up
# to 0.78, losses from 0.97 on (see above). For GTA's and GQA's 16-row tiles the model's 4 is at most what their
# binaries hold (GTA 4, GQA 5), so the rule's fill is at least theirs; tiles holding more shared memory may fit fewer.
MAX_WAVE_FILL = 0.75


# GLACOMPILER_PDL's values (any case); unset or empty is "auto"
SETTINGS = {"0": "off", "false": "off", "off": "off", "no": "off", "1": "on", "true": "on", "on": "on", "yes": "on",
            "": "auto", "auto": "auto"}


def switch_setting() -> str:
    """GLACOMPILER_PDL: "off" (0, false, off, no), "on" for every split plan (1, true, on, yes), else "auto" (by the
    wave fill), the default; a value it does not know is warned about once and taken as "auto"."""
    return _setting_of(os.environ.get(ENVIRONMENT_SWITCH, "").strip().lower())


@functools.lru_cache(maxsize=None)
def _setting_of(value: str) -> str:
    setting = SETTINGS.get(value)
    if setting is None:
        warnings.warn(f"glacompiler: {ENVIRONMENT_SWITCH}={value!r} is none of {sorted(SETTINGS)}; taken as auto",
                      RuntimeWarning, stacklevel=4)
        setting = "auto"
    return setting


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
    """Whether a kernel on `device` may launch with PDL: not switched off, on a CUDA GPU of compute capability 9.0 or
    later, run by a Triton that knows the option (not the interpreter)."""
    if device.type != "cuda" or switch_setting() == "off" or triton_interpreter_enabled():
        return False
    return _triton_launches_with_pdl() and _capable(cuda_index(device))


def within_wave_fill(programs: int, multiprocessors: int, resident: int) -> bool:
    """Whether `programs` fill at most MAX_WAVE_FILL of the slots of `multiprocessors` SMs holding `resident` each."""
    return programs <= MAX_WAVE_FILL * multiprocessors * resident


def combine_launches_dependent(device: torch.device, programs: int, resident: int) -> bool:
    """Whether a split kernel of `programs` programs (`resident` of them an SM at once) on `device` signals its
    combine, which launches dependent: where PDL is enabled, always with GLACOMPILER_PDL=1, else by the wave fill."""
    if not dependent_launch_enabled(device):
        return False
    return switch_setting() == "on" or within_wave_fill(programs, device_multiprocessors(device), resident)
