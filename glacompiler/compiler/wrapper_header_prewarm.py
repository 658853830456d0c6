"""The C++ wrapper's precompiled header, made on a thread while dynamo, AOTAutograd and Inductor work on the graph.

The first C++ wrapper a process builds asks Inductor for its precompiled header (cpp_cache_precompile_headers:
torch/csrc/inductor/cpp_wrapper/<device>.h and the libtorch headers behind it). Inductor preprocesses the header
and hashes the output to find the precompiled one on disk, and builds it where it is missing: once per machine and
compiler flags, 4 to 8 s on an H200's host, 0.2 s or more of preprocessing every process. All of it sits on the
compile's critical path, after code generation, although it depends on the build flags only, never on the graph.

start() makes that same call, on a daemon thread, as soon as the backend knows a graph will get a glue C++ wrapper
(a GPU graph without CPU kernels): Inductor's wrapper cache (CppWrapperCodeCache.load_async) is asked to load a
stub source, through every wrapper of ours (glue_wrapper_build.py's flags included), so the header it asks for is
the one a glue wrapper asks for; the stub is never compiled (no submit_fn, its loader is dropped from the cache).
The graph's own call then finds the header in _precompile_header's in-process cache. Where the thread is still at
it, the graph's call preprocesses and hashes again (the cache does not merge calls in flight) and waits for the
build under Inductor's file lock. Once per process and device type; any failure leaves the header to Inductor.

The build flags come from Inductor's config: on torch 2.13 the thread sees the graph's (a context copied inside its
patch); torch 2.11's config is module-wide, and the thread reads it as it finds it, with or without compile_fx's
patch. Settings that change the flags (cpp.cxx, say) can thus give the thread a header the graph does not use: the
graph's is then built on the critical path, as without us. So can a wrapper that is not pure glue (CPU kernels,
cpp_wrapper_build_separate, 2.13's external kernel libraries). At exit, the process waits up to EXIT_WAIT_S for a
build still running, so that it does not leave a header half written. GLACOMPILER_PREWARM_WRAPPER_HEADER=0 turns it
off.
"""
from __future__ import annotations

import atexit
import contextvars
import logging
import os
import threading

LOGGER = logging.getLogger("glacompiler")
STUB_SOURCE = "// glacompiler: asks for the C++ wrapper's precompiled header ahead of the graph's wrapper\n"

EXIT_WAIT_S = 60.0

_started: dict = {}  # device type -> its thread (one per process)
_lock = threading.Lock()


def start(config_patches: dict, device_type: str = "cuda") -> threading.Thread | None:
    """Make the precompiled header that a `device_type` C++ wrapper compiled under config_patches (over the
    caller's Inductor config) will ask for, on a daemon thread; None where there is nothing to make (no C++
    wrapper, no precompiled headers, turned off, already started)."""
    if device_type in _started or os.environ.get("GLACOMPILER_PREWARM_WRAPPER_HEADER", "1") == "0":
        return None
    try:
        import torch._inductor.config as inductor_config

        with inductor_config.patch(config_patches):
            if not inductor_config.cpp_wrapper or not inductor_config.cpp_cache_precompile_headers:
                return None
            # The thread runs in a copy of this context, where torch keeps config overrides in context
            # variables (2.13 on). torch 2.11's patch() sets the module's values for every thread: patching there
            # would change the main thread's compile, so the thread never patches and reads what is set then.
            context = contextvars.copy_context()
    except Exception:
        return None
    with _lock:
        if device_type in _started:
            return None
        thread = threading.Thread(target=context.run, args=(_ask_for_header, device_type),
                                  name=f"glacompiler-wrapper-header-{device_type}", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # (no thread to be had)
            return None
        _started[device_type] = thread
    return thread


@atexit.register
def _wait_for_builds() -> None:
    """At exit (before daemon threads are stopped): let a header build in progress finish, for a while."""
    for thread in list(_started.values()):
        thread.join(timeout=EXIT_WAIT_S)


def _ask_for_header(device_type: str) -> None:
    try:
        from torch._inductor.codecache import CppWrapperCodeCache

        loader = CppWrapperCodeCache.load_async(STUB_SOURCE, device_type)
        for key, value in list(CppWrapperCodeCache.cache.items()):
            if value is loader:  # (the stub's loader: never to be called)
                CppWrapperCodeCache.cache.pop(key, None)
    except Exception as error:  # the graph's own build makes it, as without us
        LOGGER.debug("glacompiler: the C++ wrapper's precompiled header was left to Inductor (%r)", error)
