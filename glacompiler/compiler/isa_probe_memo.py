"""Inductor's CPU-ISA probes, remembered across processes.

Before Inductor builds C++ that may hold CPU code (a CPU graph's kernels, a C++ wrapper) it picks the host's vector
ISA, once per process: for each ISA the CPU claims, it compiles a test program and loads it in a child Python
(torch/_inductor/cpu_vec_isa.py, VecISA.check_build). On the H200 machine's host (torch 2.11) these probes
measured 45 s of a 55 s warm start of a one-site graph (benchmarks/RESULTS.md). The C++ wrapper of a CUDA graph
that holds no CPU kernels needs none where glue_wrapper_build.py builds it without an ISA, as torch 2.13 does.

A probe's verdict follows the machine and its toolchain, so a passing one is written to Inductor's cache dir, keyed
by torch (version, build, location), the Python, the ISA and its compile flags, the test program, the C++
compiler (path, size, time and `-v` output), the assembler, the loader path and the CPU's flags; a later process
with the same key takes the verdict without probing. A failing probe is not remembered (it may have been a
timeout): it runs again. Should a toolchain change slip past the key (C++ compile errors naming ISA flags after an
upgrade), delete the file (memo_path(); forget_all() does) or set GLACOMPILER_ISA_PROBE_MEMO=0 to probe every
time. (The backend does not clear it on every C++ compile error: torch 2.11's C++ wrapper refuses some graphs
outright, MoE's _grouped_mm, and the memo would never last for those models.)

The memo is installed when the backend first compiles a graph (before Inductor's caches are consulted); where
Inductor compiles in a subprocess (TORCHINDUCTOR_FX_COMPILE_MODE=subprocess) that process probes as before. A
torch whose check_build does not take (self, code) keeps its probes: install() leaves it alone.

Where nothing is remembered yet (the first process on a machine, or a container whose cache does not persist),
probe_isas_concurrently() runs the probes Inductor is about to run, one thread per ISA (at most one per core),
each under the config the graph compiles with, so that their child processes overlap instead of following one
another; Inductor then finds each verdict cached on its ISA object. It returns before Inductor starts, so no ISA
object is ever probed by two threads at once (their probes change the object's flags while they run).
"""
from __future__ import annotations

import contextvars
import functools
import hashlib
import inspect
import json
import os
import platform
import shutil
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional

from ..atomic_file import write_text_atomically
from .process_patch import ProcessPatch

MEMO_FILE = "glacompiler_isa_probes.json"

_probed_concurrently = False
_passed_keys: Optional[set] = None  # loaded from the memo file on first use
_memo_lock = threading.RLock()  # concurrent probes read and add keys from several threads


def _wrap_check_build() -> bool:
    """Wrap VecISA.check_build where this torch has it with the signature we know; whether it did."""
    try:
        from torch._inductor import cpu_vec_isa
    except ImportError:
        return False
    original = getattr(cpu_vec_isa.VecISA, "check_build", None)
    if original is None or list(inspect.signature(original).parameters) != ["self", "code"]:
        return False  # a torch whose probe we do not know: leave it alone
    cpu_vec_isa.VecISA.check_build = remembering(original)
    return True


PATCH = ProcessPatch(_wrap_check_build, opt_out="GLACOMPILER_ISA_PROBE_MEMO")
install = PATCH.install


def probe_isas_concurrently(config_patches: dict, builds_cpu_code: bool, wrapper_picks_isa: bool = True) -> None:
    """Probe every ISA the CPU claims, each in its own thread (at most one per core), once per process, under the
    Inductor config the graph will compile with (config_patches over the caller's): Inductor caches each ISA's
    verdict on the object whatever the config, so a probe must see the settings Inductor's own would. Runs only
    where Inductor is about to probe in this process: the graph builds CPU code, or a C++ wrapper whose build
    picks the ISA (wrapper_picks_isa: False for a GPU graph's glue where glue_wrapper_build says it picks none),
    no ISA is chosen yet, vec_isa_ok is unset (set, it decides without probing) and compiles are not sent to a
    subprocess. x86-64 Linux only, and only where install() wrapped the probe (the same torch internals, the
    same opt-out); any surprise leaves the probes to Inductor."""
    global _probed_concurrently
    if _probed_concurrently or not PATCH.applied or not _is_x86_64_linux():
        return
    if os.environ.get("TORCHINDUCTOR_FX_COMPILE_MODE", "normal").lower() not in ("", "normal"):
        return
    try:
        import torch._inductor.config as inductor_config
        from torch._inductor import cpu_vec_isa

        with inductor_config.patch(config_patches):
            picks = builds_cpu_code or (inductor_config.cpp_wrapper and wrapper_picks_isa)
            if not picks or inductor_config.cpp.vec_isa_ok is not None:
                return
            if cpu_vec_isa.valid_vec_isa_list.cache_info().currsize:
                return  # Inductor has chosen already in this process
            _probed_concurrently = True
            claimed = cpu_vec_isa.x86_isa_checker()
            candidates = [isa for isa in cpu_vec_isa.supported_vec_isa_list
                          if all(flag in claimed for flag in str(isa).split())]
            if len(candidates) < 2:
                return
            # Each thread runs in a copy of this context: torch's config overrides live in context variables.
            contexts = [contextvars.copy_context() for _ in candidates]
            with ThreadPoolExecutor(min(len(candidates), os.cpu_count() or 1), thread_name_prefix="isa-probe") as pool:
                list(pool.map(lambda context, isa: context.run(bool, isa), contexts, candidates))
    except Exception:
        return


def _is_x86_64_linux() -> bool:
    return sys.platform == "linux" and platform.machine() == "x86_64"


def remembering(check_build: Callable) -> Callable:
    """check_build(isa, code) that returns a remembered pass instead of probing again."""

    @functools.wraps(check_build)
    def check_build_remembered(isa, code: str) -> bool:
        key = probe_key(isa, code)
        try:
            if key is not None and key in _passed():
                return True
        except Exception:  # the memo never stands in the probe's way
            key = None
        verdict = check_build(isa, code)
        if verdict and key is not None:
            _remember(key)
        return verdict

    return check_build_remembered


def probe_key(isa, code: str) -> Optional[str]:
    """What a probe's verdict depends on, hashed; None where part of it cannot be read (then it probes)."""
    try:
        import torch

        parts = [torch.__version__, str(torch.version.git_version), torch.__file__, sys.executable,
                 type(isa).__qualname__, str(isa), str(isa.build_arch_flags()), code, _compiler_identity(),
                 _file_identity(shutil.which("as")), os.environ.get("LD_LIBRARY_PATH", ""), _cpu_flags()]
    except Exception:
        return None
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _compiler_identity() -> str:
    """The C++ compiler Inductor would use now: its file (a wrapper such as ccache is followed by `-v`'s output)."""
    from torch._inductor import cpp_builder

    return _identity_of_compiler(cpp_builder.get_cpp_compiler())


@functools.lru_cache(maxsize=None)
def _identity_of_compiler(compiler: str) -> str:
    from torch._inductor import cpp_builder

    version = getattr(cpp_builder, "get_compiler_version_info", lambda _: "")(compiler)
    return f"{compiler}:{_file_identity(shutil.which(compiler) or compiler)}:{version}"


def _file_identity(path: Optional[str]) -> str:
    if not path:
        return "-"
    real = os.path.realpath(path)
    stat = os.stat(real)
    return f"{real}:{stat.st_size}:{stat.st_mtime_ns}"


@functools.lru_cache(maxsize=None)
def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}"


def memo_path() -> Path:
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return Path(cache_dir()) / MEMO_FILE


def _read_keys() -> set:
    try:
        loaded = json.loads(memo_path().read_text())
    except (OSError, ValueError):
        return set()
    return {key for key in loaded if isinstance(key, str)} if isinstance(loaded, list) else set()


def _passed() -> set:
    global _passed_keys
    with _memo_lock:
        if _passed_keys is None:
            _passed_keys = _read_keys()
        return _passed_keys


def _remember(key: str) -> None:
    """Add a passing key to the memo file: read again and merged just before writing (other processes may have
    added keys since this one read it), written whole and replaced. Two writers between one's read and its
    replace may lose a key, which then probes once more."""
    with _memo_lock:
        _passed().add(key)
        try:
            path = memo_path()
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomically(path, json.dumps(sorted(_read_keys() | _passed())), mode=0o644)
        except Exception:  # an unwritable cache dir: the next process probes again
            pass


def forget_all() -> None:
    """Delete the memo: this process and the next probe again."""
    global _passed_keys
    _passed_keys = set()
    try:
        memo_path().unlink(missing_ok=True)
    except Exception:
        pass


def forget_loaded_memo() -> None:
    """Drop what this process read of the memo file (tests: as if a new process started)."""
    global _passed_keys
    _passed_keys = None
