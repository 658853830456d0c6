"""Programmatic dependent launch (PDL) for Inductor's kernels in graphs the gla backend compiles, made safe.

With Inductor's triton.enable_pdl (torch 2.11 on, sm_90 and later), each of Inductor's own Triton kernels is launched
as a programmatic dependent of the kernel ahead of it: it may start once every block of that kernel has called
gdc_launch_dependents (Inductor emits that after a kernel's last load, so before its stores but those inside a
reduction's loop) or ended, and gdc_wait in it blocks until that kernel has ended and its writes are visible. Under
CUDA graphs this hides most of each launch (benchmarks/RESULTS.md: a Llama-3.2-1B-shaped step 1.41 -> 1.35 ms on an
H200).

Inductor's codegen (torch/_inductor/codegen/triton.py, _handle_pdl_before_access) puts a kernel's gdc_wait before
its first access only where the node scheduled just before it touches that buffer; otherwise the wait comes after
the kernel's first load, and a kernel with no loads whose stores miss the node ahead (a fill) has no wait at all.
Such a kernel B can end while the kernel A ahead of it is still storing, and the next kernel C, which waits only on
B, then loads A's output before A has written it: A (triggers after its loads, stores late), B (fill), C (reads
A's output) reads stale values. (Where every kernel waits somewhere before it triggers or ends, a kernel's start
implies that all but the kernel just ahead have ended, and Inductor's check of that one node suffices.)

install() wraps TritonKernel._filter_pdl, which each kernel's body passes through once generated (combo kernels'
sub-kernels too), so that in graphs the gla backend compiles every kernel that launches as a dependent waits
first, before any load or store; Inductor's trigger placement is kept. The kernel still starts early: its launch,
block scheduling and prologue overlap the kernel ahead, which is what PDL buys in a decode step (its loads of
weights do not overlap any more: measured in RESULTS.md). Other backends' compiles are left as Inductor makes them.
"Inside a gla compile" is the flag of inductor_guard.py, which the backend raises around Inductor's inner compile
of every graph, a backward graph compiled lazily at its first backward included. Where this torch lacks the hook,
or generates kernel code elsewhere (generates_code_here), the backend leaves PDL off.
"""
from __future__ import annotations

import functools
import importlib
import os

import torch

from .inductor_guard import gla_compiling
from .process_patch import ProcessPatch

PROGRAMMATIC_LAUNCH = "triton.enable_pdl"  # Inductor's setting (torch 2.11 and later)
ENVIRONMENT_VARIABLE = "TORCHINDUCTOR_ENABLE_PDL"


def wait_first(lines: list, wait: str) -> list:
    """A kernel body's lines with a single wait (the line `wait`, at the body's outermost indentation) ahead of
    everything else and none after."""
    kept = [line for line in lines if not (isinstance(line, str) and wait in line)]
    # Plain lines and Inductor's deferred ones both take lstrip() and len() (the latter no strip()).
    stripped = [(line, line.lstrip()) for line in kept if callable(getattr(line, "lstrip", None))]
    indents = [len(line) - len(rest) for line, rest in stripped if len(rest)]
    return [" " * min(indents, default=0) + wait] + kept


def waiting_first(filter_pdl):
    """TritonKernel._filter_pdl (the function) that, inside a gla compile and where the kernel launches as a
    dependent, also puts the kernel's wait first."""

    @functools.wraps(filter_pdl)
    def filter_with_wait_first(self, code):
        result = filter_pdl(self, code)
        if gla_compiling() and self._enable_pdl_codegen():
            code._lines = wait_first(code._lines, self.GDC_WAIT)
        return result

    return filter_with_wait_first


def _wrap_filter_pdl() -> bool:
    """Wrap Inductor's TritonKernel._filter_pdl where it is the hook we know; whether it did."""
    try:
        from torch._inductor.codegen.triton import TritonKernel
    except ImportError:
        return False
    filter_pdl = TritonKernel.__dict__.get("_filter_pdl")
    if not callable(filter_pdl) or not isinstance(getattr(TritonKernel, "GDC_WAIT", None), str) \
            or not callable(getattr(TritonKernel, "_enable_pdl_codegen", None)):
        return False  # a torch whose PDL codegen we do not know: leave it alone
    TritonKernel._filter_pdl = waiting_first(filter_pdl)
    return True


PATCH = ProcessPatch(_wrap_filter_pdl)
install = PATCH.install


def installed() -> bool:
    """Whether kernels of gla compiles that launch as dependents wait first in this process."""
    install()
    return PATCH.applied


def generates_code_here() -> bool:
    """Whether Inductor generates kernel code in this process, on the compiling thread (its default): its opt-in
    TORCHINDUCTOR_FX_COMPILE_MODE can move that to a subprocess or a background compile, where the wrapper and the
    gla flag are not."""
    mode = getattr(importlib.import_module("torch._inductor.compile_fx"), "_fx_compile_config", None)
    if mode is None:
        return "TORCHINDUCTOR_FX_COMPILE_MODE" not in os.environ
    return mode.mode.name in ("NORMAL", "SERIALIZE") and not mode.use_async and not mode.use_progressive


def left_to_us() -> bool:
    """Whether the backend may choose PDL: this Inductor has the setting, kernels wait first here, and the
    environment variable has not chosen. (Inductor's config cannot tell a value the user set from its default: a
    patch, such as every compile's, leaves the setting marked as set once it ends. So the backend's own
    inductor_config is where a user says False.)"""
    return hasattr(torch._inductor.config.triton, "enable_pdl") and ENVIRONMENT_VARIABLE not in os.environ \
        and installed() and generates_code_here()
