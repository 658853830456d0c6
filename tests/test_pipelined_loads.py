"""The portable kernel's key tiles are pipelined on sm_90: benchmarks/pipelined_loads.py compiles it for an
H100/H200 target on this CPU machine and counts, per key loop, the asynchronous copies (pipelined loads) and
the plain tile loads. Without a mask every K, V and rope tile must be an asynchronous copy; with a mask too for
GQA. (The tied GTA kernel with a mask keeps one tile out of the pipeline: benchmarks/RESULTS.md.) The counts are
those of the Triton CI installs (3.9); a Triton that pipelines differently fails here, and the template's loads
are to be checked again on it."""
import ast
import os
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # a subprocess compiling 4 kernels for sm_90: about 15 s on 2 cores

SCRIPT = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "pipelined_loads.py"


def test_key_tiles_are_pipelined_for_sm90():
    environment = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, str(SCRIPT), "--spec", "gta", "gqa64"], capture_output=True, text=True,
                            timeout=600, env=environment)
    assert result.returncode == 0, result.stderr[-2000:]
    loops = {}
    for line in result.stdout.splitlines()[1:]:
        spec, mask, rest = line.split(maxsplit=2)
        loops[spec, mask] = ast.literal_eval(rest.rsplit(maxsplit=1)[0])
    # (asynchronous copies, plain tile loads) per key loop: GTA loads its tied state's K part, its V part and the
    # rope key; GQA head dim 64 its K and V.
    assert loops["gta", "no"] == [(3, 0)]
    assert loops["gqa64", "no"] == [(2, 0)]
    assert loops["gqa64", "yes"] == [(2, 0)]
