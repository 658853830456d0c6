"""The portable kernel's key tiles are pipelined on sm_90: benchmarks/pipelined_loads.py compiles it for an
H100/H200 target on this CPU machine and counts, per key loop, the asynchronous copies (pipelined loads) and
the plain tile loads, and the registers a thread takes. Without a mask and in the dense pass of a masked call
every K, V and rope tile must be an asynchronous copy; in the sparse pass too for GQA (the tied GTA kernel's
sparse pass keeps its K tile out of the pipeline: benchmarks/RESULTS.md). The dense pass must take fewer
registers than the sparse one: that is why a masked call is two launches. The counts are those of the Triton CI
installs (3.9); a Triton that pipelines differently fails here, and the template's loads are to be checked
again on it."""
import ast
import json
import os
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # subprocesses compiling 6 and 12 kernels for sm_90: about 15 and 30 s on 2 cores

SCRIPT = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "pipelined_loads.py"


def compile_report(*arguments: str) -> dict:
    """{(spec, stages, mask pass): (key loops, Triton's shared bytes, the resource model's, registers)}."""
    environment = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, str(SCRIPT), *arguments], capture_output=True, text=True, timeout=600,
                            env=environment)
    assert result.returncode == 0, result.stderr[-2000:]
    report = {}
    for line in result.stdout.splitlines()[1:]:
        spec, stages, mask, rest = line.split(maxsplit=3)
        loop_text, shared, modelled, regs = rest.rsplit(maxsplit=3)
        report[spec, int(stages), mask] = (ast.literal_eval(loop_text), int(shared), int(modelled), int(regs))
    return report


def test_key_tiles_are_pipelined_for_sm90():
    report = compile_report("--spec", "gta", "gqa64")
    loops = {(spec, mask): value[0] for (spec, _, mask), value in report.items()}
    registers = {(spec, mask): value[3] for (spec, _, mask), value in report.items()}
    # (asynchronous copies, plain tile loads) per key loop: GTA loads its tied state's K part, its V part and the
    # rope key; GQA head dim 64 its K and V.
    assert loops["gta", "no"] == loops["gta", "dense"] == [(3, 0)]
    assert loops["gqa64", "no"] == loops["gqa64", "dense"] == loops["gqa64", "sparse"] == [(2, 0)]
    assert len(loops["gta", "sparse"]) == 1
    for spec in ("gta", "gqa64"):
        assert registers[spec, "dense"] < registers[spec, "sparse"], registers


def test_paged_key_tiles_take_a_second_buffer_at_five_stages():
    """Paged: from 3 stages the page-table load is an asynchronous copy too, run stages ahead of the key tiles,
    which get one buffer up to 4 stages and two at 5; the resource model counts the same bytes but for the page
    ids' few (kernels/portable/resource_model.py)."""
    report = compile_report("--spec", "gta", "gqa128", "--page-size", "64", "--stages", "2", "5")
    for spec, tiles in (("gta", 3), ("gqa128", 4)):
        for mask in ("no", "dense"):
            two, five = report[spec, 2, mask], report[spec, 5, mask]
            assert two[0] == [(tiles, 0)] and five[0] == [(tiles + 1, 0)], (spec, mask, two, five)
            assert five[1] > two[1], (spec, mask)
            for loops, shared, modelled, _ in (two, five):
                assert 0 <= shared - modelled <= 16, (spec, mask, shared, modelled)


def test_table_report_gives_each_configs_programs_an_sm(tmp_path):
    """--table: one line per distinct GQA/GTA/MHA config of a tuned table (the latent and duplicate entries left
    out), with registers, shared bytes and the programs an SM holds without a mask and in each pass of a masked
    call, and the count of configs a pass costs a program."""
    gta = {"kind": "gta", "num_q_heads": 16, "num_kv_heads": 4, "head_dim_q": 128, "head_dim_k": 128,
           "head_dim_v": 128, "rope_dim": 64, "tied": True, "paged": False, "dtype": "bfloat16"}
    config = {"block_m": 16, "block_n": 64, "block_d": 64, "num_splits": 4, "num_warps": 4, "num_stages": 3,
              "preload_q": True, "dv_split": 1, "fused_combine": False}
    entry = {"family": "portable", "spec": gta, "bucket": {"batch": 8, "capacity": 4096, "query_len": 1},
             "page_size": 0, "config": config}
    latent = {**entry, "family": "latent_hopper", "spec": {**gta, "kind": "gla"}}
    table = tmp_path / "table.json"
    table.write_text(json.dumps({"entries": [entry, {**entry, "bucket": {"batch": 32, "capacity": 4096,
                                                                          "query_len": 1}}, latent]}))
    environment = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, str(SCRIPT), "--table", str(table)], capture_output=True, text=True,
                            timeout=600, env=environment)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and lines[-1].startswith("1 configs;"), lines
    cells = [cell.split() for cell in lines[1].split("|")[1:]]
    assert len(cells) == 3  # no mask, the dense pass, the sparse pass
    for registers, shared, programs in cells:
        # 128 threads a program: at most 16 an SM by threads; by registers 65536 // (128 x registers, rounded up
        # to 8 a thread); by shared memory 233472 // (shared + 1024).
        rounded = -(-int(registers) // 8) * 8
        assert int(programs) == min(16, 65536 // (128 * rounded), 233472 // (int(shared) + 1024))
