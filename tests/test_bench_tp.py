"""benchmarks/bench_tp.py refuses the paper's sizes without a GPU, before any process group starts: on CPU they
exhausted a 23 GB machine's memory (a rank killed, no message) where --tiny is the CPU run."""
import os
import subprocess
import sys

from benchmark_scripts import BENCHMARKS


def test_paper_sizes_without_a_gpu_point_to_tiny():
    environment = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # (no GPU, on any machine)
    result = subprocess.run([sys.executable, str(BENCHMARKS / "bench_tp.py"), "--quick"], capture_output=True,
                            text=True, cwd=BENCHMARKS.parent, env=environment, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "need CUDA GPUs" in result.stderr and "--tiny" in result.stderr
    assert "Traceback" not in result.stderr
