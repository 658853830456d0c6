"""benchmarks/bench_cpu_attention.py: its tiny run prints a row per case, and the op it times computes what the
baselines it is compared with compute (grouped and latent cases alike)."""
import subprocess
import sys

import torch

from benchmark_scripts import BENCHMARKS, load_benchmark_script


def test_tiny_run_prints_every_case():
    run = subprocess.run([sys.executable, str(BENCHMARKS / "bench_cpu_attention.py"), "--tiny", "--seconds", "0.05"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert "copy bandwidth" in lines[0]
    rows = [line for line in lines[2:] if line.strip()]
    assert [row.split()[0] for row in rows] == ["GQA", "MLA"]
    differences = [float(row.split()[-1]) for row in rows]
    assert all(difference < 2e-2 for difference in differences), differences  # (bf16 and float32 rows)


def test_a_case_checks_the_op_against_the_reference_and_counts_the_valid_bytes():
    bench = load_benchmark_script("bench_cpu_attention")
    # floor ms at 1 GB/s: 2 sequences x 40 valid keys x bytes a key (GQA: K and V of 2 heads of 16 in float32, 256;
    # MLA: a latent of 32 and a rope key of 8 in bf16, 80)
    for case, tolerance, floor in ((bench.Case("GQA", 4, 2, 16, 0, 2, 64, 40, torch.float32), 1e-6, 0.02048),
                                   (bench.Case("MLA", 8, 1, 32, 8, 2, 64, 40, torch.bfloat16), 2e-2, 0.0064)):
        row = bench.time_case(case, bandwidth=1e9, seconds=0.01)
        assert row["difference"] < tolerance, (case, row)
        assert min(row["op"], row["reference"]) > 0 and ("sdpa" in row) == (case.rope_dim == 0)
        assert abs(row["floor"] - floor) < 1e-12, row
