"""`glacompiler autotune` and `glacompiler configs show` (glacompiler/tuning/command.py): argument checks, the
specs they name, a whole run on a synthetic kernel, and the printed table."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

optuna = pytest.importorskip("optuna")

from glacompiler.kernels.portable.config import PortableConfig  # noqa: E402
from glacompiler.presets import PAPER_SPECS  # noqa: E402
from glacompiler.tables.table_file import Bucket, read_table, write_table  # noqa: E402
from glacompiler.tuning import command  # noqa: E402
from tuning_doubles import SMALL_GPU, SyntheticKernel, entry, make_table, run_cli  # noqa: E402


@pytest.mark.parametrize("argv,message", [
    (["autotune", "--preset", "mha7"], "invalid choice: 'mha7'"),
    (["autotune"], "say what to tune"),
    (["autotune", "--preset", "mla", "--heads", "64"], "cannot be combined with --preset"),
    (["autotune", "--kind", "gqa", "--heads", "32"], "needs --kv-heads/--latent-heads, --head-dim/--latent-dim"),
    (["autotune", "--kind", "gqa", "--heads", "30", "--kv-heads", "8", "--head-dim", "128"], "not a multiple"),
    (["autotune", "--kind", "gqa", "--heads", "32", "--kv-heads", "8", "--head-dim", "100"], "bad dims"),
    (["autotune", "--kind", "gla", "--heads", "128", "--latent-heads", "1", "--latent-dim", "512"],
     "describe mla, not gla"),
    (["autotune", "--kind", "gta", "--heads", "16", "--kv-heads", "4", "--head-dim", "128", "--rope-dim", "128"],
     "d_R < d_h"),
    (["autotune", "--kind", "mla", "--heads", "128", "--latent-dim", "512", "--rope-dim", "40"], "rope dim"),
    (["autotune", "--preset", "gqa", "--page-size", "48"], "power of two"),
    (["autotune", "--preset", "gqa", "--seqlen", "1000"], "multiples of the page size"),
    (["autotune", "--preset", "gqa", "--q-len", "32"], "at most 16"),
    (["autotune", "--preset", "gqa", "--batch", "0"], "must be positive"),
    (["autotune", "--preset", "gqa", "--trials", "0"], "--trials must be >= 1"),
    (["autotune", "--preset", "gqa", "--dtype", "int8"], "invalid choice: 'int8'"),
])
def test_cli_rejects_impossible_requests(argv, message, capsys):
    code, output = run_cli(argv, capsys)
    assert code == 2
    assert message in output


def test_cli_without_a_gpu_says_so(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, output = run_cli(["autotune", "--preset", "gqa", "--batch", "1", "--seqlen", "1024", "--q-len", "1"], capsys)
    assert code == 2 and "CUDA GPU" in output and "Traceback" not in output


def test_cli_specs_match_the_issue():
    from argparse import Namespace

    def specs(**kwargs):
        defaults = dict(preset=None, kind=None, heads=None, kv_heads=None, head_dim=None, rope_dim=None,
                        dtype="bfloat16", page_size=64)
        return command.specs_from_args(Namespace(**{**defaults, **kwargs}))

    (gla,) = specs(kind="gla", heads=128, kv_heads=2, head_dim=256, rope_dim=64)
    assert gla == PAPER_SPECS["gla2"]
    assert (gla.head_dim_q, gla.head_dim_v, gla.rope_dim, gla.tied, gla.paged) == (256, 256, 64, True, True)
    (gta,) = specs(preset=["gta"])
    assert (gta.num_q_heads, gta.num_kv_heads, gta.head_dim_q, gta.head_dim_k, gta.head_dim_v, gta.rope_dim) == \
        (16, 4, 64, 128, 128, 64)
    mla, gqa = specs(preset=["mla", "gqa", "mla"])
    assert (mla.num_kv_heads, mla.head_dim_k, mla.rope_dim) == (1, 512, 64)
    assert (gqa.kind, gqa.num_kv_heads, gqa.head_dim_v, gqa.tied) == ("gqa", 8, 128, False)
    (contiguous,) = specs(kind="mha", heads=8, head_dim=64, page_size=0)
    assert contiguous.kind == "mha" and contiguous.num_kv_heads == 8 and not contiguous.paged


def test_cli_autotune_end_to_end_on_a_synthetic_kernel(tmp_path, monkeypatch, capsys):
    """The whole command with the GPU pieces swapped out: the table it writes, and what it prints."""
    from glacompiler.kernels.common import device_limits
    from glacompiler.tuning import benchmark

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(device_limits.DeviceLimits, "for_device", classmethod(lambda cls, device: SMALL_GPU))
    monkeypatch.setattr(benchmark, "KernelBenchmark", lambda spec, shape, device, limits: SyntheticKernel(spec))
    argv = ["autotune", "--preset", "gqa", "--batch", "4", "--seqlen", "1024", "8192", "--q-len", "1",
            "--trials", "6", "--out", f"{tmp_path}/"]
    code, output = run_cli(argv, capsys)
    assert code == 0, output
    table = read_table(tmp_path / "Synthetic_GPU.json")
    assert {entry.bucket for entry in table.entries.values()} == {Bucket(4, 1024, 1), Bucket(4, 8192, 1)}
    assert table.commands == ["glacompiler autotune --preset gqa --dtype bfloat16 --page-size 64 --batch 4 "
                              "--seqlen 1024 8192 --q-len 1 --trials 6"]
    assert (tmp_path / "Synthetic_GPU.journal").exists()
    assert "tuned 2, already in the table 0" in output and "speed-up over the heuristic: median x" in output
    code, output = run_cli(argv, capsys)  # everything is in the table already
    assert code == 0 and "tuned 0, already in the table 2" in output


def test_cli_refuses_a_table_of_another_gpu(tmp_path, monkeypatch, capsys):
    """--out naming another GPU's table (an H200 table on an H100 lease) is a usage error before anything is timed,
    not a traceback from the first bucket."""
    from glacompiler.kernels.common import device_limits
    from glacompiler.tables.table_file import ConfigTable

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(device_limits.DeviceLimits, "for_device", classmethod(lambda cls, device: SMALL_GPU))
    out = tmp_path / "NVIDIA_H200.json"
    write_table(ConfigTable.new("NVIDIA H200"), out)
    before = out.read_bytes()
    code, output = run_cli(["autotune", "--preset", "gqa", "--batch", "4", "--seqlen", "1024", "--q-len", "1",
                            "--out", str(out)], capsys)
    assert code == 2 and "--out:" in output and "not for this GPU ('Synthetic GPU')" in output
    assert "Traceback" not in output and "buckets x up to" not in output
    assert out.read_bytes() == before


def test_cli_out_path(tmp_path, monkeypatch):
    monkeypatch.setenv("GLACOMPILER_CACHE_DIR", str(tmp_path / "cache"))
    assert command.resolve_out_path(None, "NVIDIA H200") == tmp_path / "cache" / "configs" / "NVIDIA_H200.json"
    assert command.resolve_out_path(str(tmp_path), "NVIDIA H200") == tmp_path / "NVIDIA_H200.json"
    assert command.resolve_out_path(str(tmp_path / "x.json"), "NVIDIA H200") == tmp_path / "x.json"


def test_configs_show_prints_a_table(tmp_path, capsys):
    path = tmp_path / "NVIDIA_H200.json"
    write_table(make_table([entry(PAPER_SPECS["mla"], Bucket(128, 8192, 1), PortableConfig(block_m=64, num_splits=2),
                                  tuned_us=500.0, default_us=650.0)], gpu="NVIDIA H200"), path)
    code, output = run_cli(["configs", "show", str(path)], capsys)
    assert code == 0
    assert "mla 128/1 512:512:512+64 bfloat16 paged" in output
    assert "128x8192x1" in output and "500.0" in output and "650.0" in output and "x1.30" in output
    assert "median x1.30, worst x1.30" in output
    code, output = run_cli(["configs", "show", str(tmp_path / "missing.json")], capsys)
    assert code == 1 and "no table" in output


@pytest.mark.slow
def test_autotune_tables_script_runs_the_command(tmp_path):
    """benchmarks/autotune_tables.sh from end to end, with torch made to see an H200 (a sitecustomize) and --help last
    (argparse takes the last flags; the command then prints its usage instead of tuning): it names the table, copies
    the shipped one into its output folder and runs the command. It once stopped at an import gone in a refactor
    and, past it, ran a module without a __main__ block, which exits 0 having done nothing."""
    root = Path(__file__).resolve().parents[1]
    (tmp_path / "sitecustomize.py").write_text(
        "import torch\ntorch.cuda.is_available = lambda: True\n"
        "torch.cuda.get_device_name = lambda *args: 'NVIDIA H200'\n")
    env = {**os.environ, "PYTHON": sys.executable,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    out = tmp_path / "out"
    result = subprocess.run(["bash", str(root / "benchmarks" / "autotune_tables.sh"), str(out), "60", "2", "--help"],
                            capture_output=True, text=True, env=env, cwd=root, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "--preset" in result.stdout and "--time-budget" in result.stdout
    assert (out / "NVIDIA_H200.json").read_bytes() == (root / "tuned_configs" / "NVIDIA_H200.json").read_bytes()
