"""The portable kernel's key tiles are pipelined on sm_90: benchmarks/pipelined_loads.py compiles it for an
H100/H200 target on this CPU machine and counts, per key loop, the asynchronous copies (pipelined loads) and
the plain tile loads, and the registers a thread takes. Without a mask and in the dense pass of a masked call
every K, V and rope tile must be an asynchronous copy; in the sparse pass too for GQA (the tied GTA kernel's
sparse pass keeps its K tile out of the pipeline: benchmarks/RESULTS.md). The dense pass must take fewer
registers than the sparse one: that is why a masked call is two launches. The counts are those of the Triton CI
installs (3.9); a Triton that pipelines differently fails here, and the template's loads are to be checked
again on it."""
import ast
import os
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # a subprocess compiling 6 kernels for sm_90: about 15 s on 2 cores

SCRIPT = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "pipelined_loads.py"


def test_key_tiles_are_pipelined_for_sm90():
    environment = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, str(SCRIPT), "--spec", "gta", "gqa64"], capture_output=True, text=True,
                            timeout=600, env=environment)
    assert result.returncode == 0, result.stderr[-2000:]
    loops, registers = {}, {}
    for line in result.stdout.splitlines()[1:]:
        spec, mask, rest = line.split(maxsplit=2)
        loop_text, _shared, regs = rest.rsplit(maxsplit=2)
        loops[spec, mask] = ast.literal_eval(loop_text)
        registers[spec, mask] = int(regs)
    # (asynchronous copies, plain tile loads) per key loop: GTA loads its tied state's K part, its V part and the
    # rope key; GQA head dim 64 its K and V.
    assert loops["gta", "no"] == loops["gta", "dense"] == [(3, 0)]
    assert loops["gqa64", "no"] == loops["gqa64", "dense"] == loops["gqa64", "sparse"] == [(2, 0)]
    assert len(loops["gta", "sparse"]) == 1
    for spec in ("gta", "gqa64"):
        assert registers[spec, "dense"] < registers[spec, "sparse"], registers
