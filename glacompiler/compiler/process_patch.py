"""A patch of torch's or Triton's internals, applied at most once a process.

The compiler package patches a few internals when the backend first compiles a graph (the ISA probes' memo, the
C++ wrapper's int arrays, the glue wrapper's build, PDL's wait, the kernel-analysis memo, the launcher-stub
builds). Each checks that the internal is the one it knows and leaves any other alone; some can be turned off by an
environment variable. ProcessPatch holds what they share: run once, the opt-out, whether it patched.
"""
from __future__ import annotations

import os
from typing import Callable, Optional


class ProcessPatch:
    """`apply` runs at the first install() (never where the environment variable `opt_out` is "0") and returns
    whether it patched: False where this torch's internals are not the ones it knows. A failed apply is not
    retried."""

    __slots__ = ("_apply", "opt_out", "tried", "applied")

    def __init__(self, apply: Callable[[], bool], opt_out: Optional[str] = None):
        self._apply, self.opt_out = apply, opt_out
        self.tried = False  # install() has run apply
        self.applied = False  # ...and it patched

    def install(self) -> None:
        if self.tried or (self.opt_out is not None and os.environ.get(self.opt_out, "1") == "0"):
            return
        self.tried = True
        self.applied = bool(self._apply())
